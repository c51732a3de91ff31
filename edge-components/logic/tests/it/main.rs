//! Property tests (generator + oracle) over request validation and token parsing. They run
//! in CI with a bounded number of cases (`PROPTEST_CASES`, default 256 here).

use proptest::prelude::*;
use tessera_api::queue::{QueuePhase, QueueTicketClaims};
use tessera_api::{CustomerId, ErrorCode, EventId, QueueTicketId};
use tessera_edge_logic::{Limits, RequestView, validate};
use tessera_identity::{Keyset, SigningKeyPair};

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
}

fn check(
    method: &str,
    path: &str,
    headers: &[(String, Vec<u8>)],
    body: &[u8],
) -> Result<String, (u16, String)> {
    let hs: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect();
    let (path, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    let req = RequestView { method, path, query, headers: &hs, body };
    validate(&req, &Limits::default())
        .map(|r| r.name().to_owned())
        .map_err(|e| (e.status(), e.to_json()))
}

fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("GET".to_owned()),
        Just("POST".to_owned()),
        Just("PUT".to_owned()),
        Just("DELETE".to_owned()),
        "[A-Z]{1,8}",
    ]
}

fn path() -> impl Strategy<Value = String> {
    let seg = prop_oneof![
        Just("v1".to_owned()),
        Just("events".to_owned()),
        Just("queue".to_owned()),
        Just("holds".to_owned()),
        Just("orders".to_owned()),
        Just("ops".to_owned()),
        Just("sections".to_owned()),
        Just("seats".to_owned()),
        "[a-z0-9-]{1,12}",
        "h_[a-z0-9]{8,12}",
        ".{0,20}",
    ];
    proptest::collection::vec(seg, 0..7).prop_map(|s| format!("/{}", s.join("/")))
}

fn header() -> impl Strategy<Value = (String, Vec<u8>)> {
    (
        prop_oneof![
            Just("content-type".to_owned()),
            Just("authorization".to_owned()),
            Just("x-tessera-device".to_owned()),
            Just("x-tessera-admission".to_owned()),
            Just("x-tessera-queue-ticket".to_owned()),
            Just("idempotency-key".to_owned()),
            "[a-z-]{1,16}",
        ],
        prop_oneof![
            Just(b"application/json".to_vec()),
            Just(b"Bearer a.b.c".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..64),
        ],
    )
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        Just(br#"{"seats":["A-1-1"]}"#.to_vec()),
        Just(br#"{"pool":"FLOOR","quantity":2}"#.to_vec()),
        Just(br#"{"hold_id":"h_abcdefgh12","payment_method":"pm_x"}"#.to_vec()),
        Just(br#"{"client_nonce":"00112233445566778899aabbccddeeff"}"#.to_vec()),
        proptest::collection::vec(any::<u8>(), 0..256),
        "\\PC{0,200}".prop_map(String::into_bytes),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// Oracle: validation never panics; every refusal is a 4xx whose body is exactly
    /// `{"code","message"}` with a code whose status matches; every acceptance names a
    /// route whose path re-classifies to the same route.
    #[test]
    fn validation_answers_every_request_with_a_route_or_a_coded_4xx(
        m in method(), p in path(), hs in proptest::collection::vec(header(), 0..8), b in body()
    ) {
        match check(&m, &p, &hs, &b) {
            Ok(route) => {
                let again = tessera_edge_logic::routes::classify(&m, p.split('?').next().unwrap_or("")).unwrap();
                prop_assert_eq!(again.name(), route);
            }
            Err((status, json)) => {
                prop_assert!((400..500).contains(&status), "status {}", status);
                let v: serde_json::Value = serde_json::from_str(&json).unwrap();
                let obj = v.as_object().unwrap();
                prop_assert_eq!(obj.len(), 2);
                let code: ErrorCode = serde_json::from_value(v["code"].clone()).unwrap();
                prop_assert_eq!(code.status(), status);
                prop_assert!(code != ErrorCode::Other);
            }
        }
    }

    /// Generator of valid hold requests: all accepted; the same request with a bad
    /// quantity, an unknown field, or a missing admission token: all refused.
    #[test]
    fn well_formed_holds_pass_and_their_mutations_fail(
        quantity in 1i64..=20, section in "[A-Z]{1,4}", mutate in 0u8..3
    ) {
        let headers = vec![
            ("content-type".to_owned(), b"application/json".to_vec()),
            ("authorization".to_owned(), b"Bearer a.b.c".to_vec()),
            ("x-tessera-device".to_owned(), b"dev".to_vec()),
            ("x-tessera-admission".to_owned(), b"x.y.z".to_vec()),
        ];
        let good = format!(r#"{{"section":"{section}","quantity":{quantity}}}"#);
        prop_assert_eq!(check("POST", "/v1/events/e-1/holds", &headers, good.as_bytes()).unwrap(), "create_hold");
        let (bad_headers, bad_body) = match mutate {
            0 => (headers.clone(), format!(r#"{{"section":"{section}","quantity":{}}}"#, quantity + 20)),
            1 => (headers.clone(), format!(r#"{{"section":"{section}","quantity":{quantity},"extra":1}}"#)),
            _ => (headers[..3].to_vec(), good.clone()),
        };
        prop_assert!(check("POST", "/v1/events/e-1/holds", &bad_headers, bad_body.as_bytes()).is_err());
    }

    /// Token parsing: arbitrary strings never verify and never panic; any single-byte
    /// change to a genuine token makes it fail.
    #[test]
    fn tokens_survive_arbitrary_input_and_reject_every_tampering(
        junk in "\\PC{0,400}", pos in any::<prop::sample::Index>(), byte in any::<u8>()
    ) {
        let key = SigningKeyPair::derive_for_development("e", "k");
        let keys = Keyset::new([key.public()]);
        let ev = EventId::parse("e-1").unwrap();
        let dev = tessera_queue::device_hash("d");
        prop_assert!(tessera_queue::verify_ticket(&keys, &junk, &ev, &dev, 0).is_err());
        let claims = QueueTicketClaims {
            typ: "qt".into(),
            ticket_id: QueueTicketId::from_random(5),
            event_id: ev.clone(),
            customer_id: CustomerId::parse("c").unwrap(),
            device: dev.clone(),
            phase: QueuePhase::Open,
            seq: 1,
            rank: None,
            iat_ms: 0,
            exp_ms: u64::MAX,
            kid: String::new(),
            waiting_list: false,
        };
        let token = tessera_queue::issue(&key, &claims);
        prop_assert!(tessera_queue::verify_ticket(&keys, &token, &ev, &dev, 1).is_ok());
        let mut bytes = token.into_bytes();
        let i = pos.index(bytes.len());
        if bytes[i] != byte {
            bytes[i] = byte;
            if let Ok(t) = String::from_utf8(bytes) {
                // Base64url has unused low bits in its last character; a change there
                // decodes to the same bytes and the token is genuinely the same.
                let same = tessera_identity::decode_unverified(&t).ok().zip(tessera_identity::decode_unverified(&tessera_queue::issue(&key, &claims)).ok())
                    .is_some_and(|(a, b)| a.signature() == b.signature() && a.kid == b.kid && a.claims::<serde_json::Value>().ok() == b.claims::<serde_json::Value>().ok());
                if !same {
                    prop_assert!(tessera_queue::verify_ticket(&keys, &t, &ev, &dev, 1).is_err());
                }
            }
        }
    }
}
