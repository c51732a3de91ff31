//! Checks of the fan pages' sources and bundle: every error code and every string the
//! pages use has a text in every language, and the pages stay within their weight budgets.

use std::collections::BTreeSet;

use tessera_web::{build, catalogues, web_dir};

/// The waiting-room page with everything it loads, gzipped.
const WAITING_ROOM_BUDGET_BYTES: usize = 50 * 1024;
/// The seat-map page with everything it loads, gzipped (the map's data comes on top).
const SEAT_MAP_BUDGET_BYTES: usize = 150 * 1024;

#[test]
fn every_error_code_has_a_message_in_every_catalogue() {
    let cats = catalogues(&web_dir()).unwrap();
    assert!(cats.iter().any(|c| c.lang == "en") && cats.iter().any(|c| c.lang == "de"));
    let mut missing = Vec::new();
    for c in &cats {
        for code in tessera_api::ErrorCode::ALL {
            match c.errors.get(code.as_str()) {
                Some(text) if !text.trim().is_empty() => {}
                _ => missing.push(format!("{}: {}", c.lang, code.as_str())),
            }
        }
        // The page's own code for a lost connection.
        if !c.errors.contains_key("network") {
            missing.push(format!("{}: network", c.lang));
        }
    }
    assert!(missing.is_empty(), "error codes without a message:\n{}", missing.join("\n"));
}

/// `t("key"`, `tn("key"` and `{{t:key}}` in the sources.
fn used_keys() -> (BTreeSet<String>, BTreeSet<String>) {
    let web = web_dir();
    let mut plain = BTreeSet::new();
    let mut plural = BTreeSet::new();
    let grab = |text: &str, marker: &str, end: char, into: &mut BTreeSet<String>| {
        for (i, _) in text.match_indices(marker) {
            // `t("` must not be the tail of another name (`set("`, `get("`).
            let before = text[..i].chars().next_back();
            if marker.starts_with('t')
                && before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '.')
            {
                continue;
            }
            let rest = &text[i + marker.len()..];
            if let Some(e) = rest.find(end) {
                into.insert(rest[..e].to_owned());
            }
        }
    };
    for sub in ["assets", "pages"] {
        for e in std::fs::read_dir(web.join(sub)).unwrap() {
            let p = e.unwrap().path();
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            grab(&text, "t(\"", '"', &mut plain);
            grab(&text, "tn(\"", '"', &mut plural);
            grab(&text, "{{t:", '}', &mut plain);
        }
    }
    // Keys built from API values (`t(`state_${state}`)`): every value the API can send.
    for s in ["scheduled", "on_sale", "paused", "sold_out", "closed"] {
        plain.insert(format!("state_{s}"));
    }
    for s in ["paused", "sold_out", "closed"] {
        plain.insert(format!("event_state_{s}"));
    }
    for s in ["released", "expired"] {
        plain.insert(format!("hold_{s}"));
    }
    for s in ["payment_pending", "completed", "failed", "refunded"] {
        plain.insert(format!("order_{s}"));
    }
    for s in ["failed", "refunded"] {
        plain.insert(format!("order_{s}_text"));
    }
    (plain, plural)
}

#[test]
fn every_string_the_pages_use_is_in_every_catalogue() {
    let (plain, plural) = used_keys();
    assert!(plain.len() > 100, "found only {} keys: the scan is broken", plain.len());
    let mut missing = Vec::new();
    for c in catalogues(&web_dir()).unwrap() {
        for k in &plain {
            if !c.ui.contains_key(k) {
                missing.push(format!("{}: {k}", c.lang));
            }
        }
        for k in &plural {
            for form in ["one", "other"] {
                if !c.ui.contains_key(&format!("{k}_{form}")) {
                    missing.push(format!("{}: {k}_{form}", c.lang));
                }
            }
        }
    }
    assert!(missing.is_empty(), "strings without a text:\n{}", missing.join("\n"));
}

#[test]
fn catalogues_have_the_same_keys_and_placeholders() {
    let cats = catalogues(&web_dir()).unwrap();
    let en = cats.iter().find(|c| c.lang == "en").unwrap();
    let holes = |s: &str| -> BTreeSet<String> {
        s.split('{').skip(1).filter_map(|p| p.split_once('}').map(|(k, _)| k.to_owned())).collect()
    };
    for c in &cats {
        let a: BTreeSet<_> = en.ui.keys().collect();
        let b: BTreeSet<_> = c.ui.keys().collect();
        assert_eq!(a, b, "{} has other UI keys than en", c.lang);
        for (k, v) in &c.ui {
            assert_eq!(holes(v), holes(&en.ui[k]), "{}: `{k}` has other placeholders", c.lang);
        }
    }
}

#[test]
fn assets_have_content_hashed_names_and_pages_reference_only_those() {
    let b = build(&web_dir()).unwrap();
    for a in &b.assets {
        assert_ne!(a.path, a.logical);
        assert!(a.path.starts_with("/assets/"), "{}", a.path);
    }
    for p in &b.pages {
        let html = String::from_utf8(p.html.clone()).unwrap();
        for a in &b.assets {
            // Plain names appear only as import-map keys.
            let plain = format!("\"{}\"", a.logical);
            let in_map = html.matches(&format!("{plain}:")).count();
            assert_eq!(
                html.matches(&plain).count(),
                in_map,
                "{} ({}) uses {plain}",
                p.name,
                p.lang
            );
        }
        assert!(html.contains(&format!("<html lang=\"{}\">", p.lang)));
        assert!(!html.contains("style=\""), "{}: inline styles are refused by the CSP", p.name);
    }
}

#[test]
fn waiting_room_and_seat_map_stay_within_their_weight_budgets() {
    let b = build(&web_dir()).unwrap();
    for lang in &b.langs {
        let queue = b.page_weight_gzip("queue", lang).unwrap();
        let seats = b.page_weight_gzip("seats", lang).unwrap();
        println!("{lang}: waiting room {queue} B, seat map {seats} B (gzip, first visit)");
        assert!(
            queue <= WAITING_ROOM_BUDGET_BYTES,
            "waiting room {queue} B > {WAITING_ROOM_BUDGET_BYTES} B"
        );
        assert!(seats <= SEAT_MAP_BUDGET_BYTES, "seat map {seats} B > {SEAT_MAP_BUDGET_BYTES} B");
    }
}
