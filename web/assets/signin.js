import { api, keepIdentity, header } from "/assets/api.js";
import { $, t, notice, focusOn, param } from "/assets/ui.js";

header();
const form = $("#signin");
const next = param("next", /^\/[A-Za-z0-9/_\-?=&.%]*$/) || "/";
form.addEventListener("submit", async (e) => {
  e.preventDefault();
  const name = $("#name").value.trim();
  const email = $("#email").value.trim();
  if (!/^[A-Za-z0-9_.@:+-]{1,64}$/.test(name)) {
    notice("bad", t("signin_name_invalid"));
    $("#name").setAttribute("aria-invalid", "true");
    focusOn($("#name"));
    return;
  }
  $("#name").removeAttribute("aria-invalid");
  if (email && !/^[^@\s]+@[^@\s]+$/.test(email)) {
    notice("bad", t("signin_email_invalid"));
    $("#email").setAttribute("aria-invalid", "true");
    focusOn($("#email"));
    return;
  }
  const button = form.querySelector("button");
  button.disabled = true;
  try {
    // Only ever a fan's token: the pages never ask for an operator role.
    const body = { customer_id: name };
    if (email) body.email = email;
    const { data } = await api("/v1/dev/token", { method: "POST", json: body, auth: false, retry: true });
    if (!keepIdentity(data.token)) throw new Error(t("signin_failed"));
    location.assign(next);
  } catch (err) {
    notice("bad", err.message);
    button.disabled = false;
  }
});
focusOn($("#name"));
