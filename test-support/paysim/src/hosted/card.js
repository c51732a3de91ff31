// The provider's card fields: tokenizes the card for the embedding page, which gets only
// the payment method id. It answers only its parent window, at the origin the page named.
(function () {
  "use strict";
  var params = new URLSearchParams(location.search);
  var key = params.get("key") || "";
  var parentOrigin = params.get("origin") || "";
  var lang = (params.get("lang") || "en").slice(0, 2);
  var T = {
    de: {
      number: "Kartennummer", exp: "Gültig bis (MM / JJ)", cvc: "Prüfnummer",
      test: "Testmodus: 4242 4242 4242 4242 (wird angenommen) oder 4000 0000 0000 0002 (wird abgelehnt), beliebiges künftiges Datum, beliebige Prüfnummer.",
      incorrect_number: "Die Kartennummer ist nicht korrekt.",
      invalid_expiry_month: "Der Ablaufmonat ist ungültig.",
      invalid_expiry_year: "Das Ablaufdatum ist ungültig oder vorbei.",
      invalid_cvc: "Die Prüfnummer ist ungültig.",
      card_declined: "Die Karte wurde abgelehnt.",
      failed: "Die Kartendaten konnten nicht geprüft werden. Bitte erneut versuchen.",
    },
    en: {
      incorrect_number: "Your card number is incorrect.",
      invalid_expiry_month: "Your card's expiry month is invalid.",
      invalid_expiry_year: "Your card's expiry date is invalid or in the past.",
      invalid_cvc: "Your card's security code is invalid.",
      card_declined: "Your card was declined.",
      failed: "Your card details could not be checked. Please try again.",
    },
  };
  var t = T[lang] || T.en;
  document.documentElement.lang = T[lang] ? lang : "en";
  document.querySelectorAll("[data-t]").forEach(function (el) {
    var k = el.getAttribute("data-t");
    if (t[k]) el.textContent = t[k];
  });
  var fields = { number: "number", exp_month: "exp", exp_year: "exp", cvc: "cvc" };

  function setError(param, message) {
    ["number", "exp", "cvc"].forEach(function (id) {
      var bad = fields[param] === id;
      document.getElementById(id).setAttribute("aria-invalid", bad ? "true" : "false");
      document.getElementById(id + "-err").textContent = bad ? message : "";
    });
  }

  document.getElementById("exp").addEventListener("input", function (e) {
    var d = e.target.value.replace(/\D/g, "").slice(0, 4);
    e.target.value = d.length > 2 ? d.slice(0, 2) + " / " + d.slice(2) : d;
  });

  function reply(msg) {
    if (parentOrigin) window.parent.postMessage(msg, parentOrigin);
  }

  function tokenize(id) {
    var exp = document.getElementById("exp").value.replace(/\D/g, "");
    var form = new URLSearchParams();
    form.set("type", "card");
    form.set("card[number]", document.getElementById("number").value.replace(/\s/g, ""));
    form.set("card[exp_month]", exp.slice(0, 2));
    form.set("card[exp_year]", exp.slice(2));
    form.set("card[cvc]", document.getElementById("cvc").value.trim());
    fetch("/v1/payment_methods", {
      method: "POST",
      headers: { authorization: "Bearer " + key, "content-type": "application/x-www-form-urlencoded" },
      body: form.toString(),
    }).then(function (r) {
      return r.json().then(function (body) { return { ok: r.ok, body: body }; });
    }).then(function (res) {
      if (res.ok) {
        setError(null, "");
        reply({ type: "tessera-pay:payment_method", id: id, payment_method: res.body.id });
      } else {
        var err = res.body.error || {};
        var message = t[err.code] || t.failed;
        setError(err.param === "exp_month" || err.param === "exp_year" ? err.param : (err.param || "number"), message);
        reply({ type: "tessera-pay:error", id: id, code: err.code || "failed", message: message });
      }
    }).catch(function () {
      reply({ type: "tessera-pay:error", id: id, code: "failed", message: t.failed });
    });
  }

  window.addEventListener("message", function (e) {
    if (e.source !== window.parent || e.origin !== parentOrigin) return;
    var m = e.data || {};
    if (m.type === "tessera-pay:tokenize" && typeof m.id === "string") tokenize(m.id);
  });

  // The content's own height (not the document's, which is at least the frame's): asking
  // for the viewport's height would grow the frame a little on every resize.
  var lastHeight = 0;
  function size() {
    var height = Math.ceil(document.querySelector("main").getBoundingClientRect().height) + 8;
    if (height === lastHeight) return;
    lastHeight = height;
    reply({ type: "tessera-pay:resize", height: height });
  }
  window.addEventListener("load", size);
  window.addEventListener("resize", size);
})();
