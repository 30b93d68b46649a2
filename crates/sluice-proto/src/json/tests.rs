use super::*;
use proptest::prelude::*;

fn serde_ok(doc: &[u8]) -> bool {
    serde_json::from_slice::<&serde_json::value::RawValue>(doc).is_ok()
}

#[test]
fn accepts_valid_documents() {
    for doc in [
        "{}",
        "[]",
        " {\"a\" : [1, -2.5e+3, 0, 0.0, 1E9, true, false, null, \"x\\\"\\u00e9\\n\"], \"b\": {}} ",
        "\"just a string\"",
        "-0",
        "[[[[[]]]]]",
        "{\"k\":\"caf\u{e9} \u{1F600}\"}",
    ] {
        assert_eq!(validate(doc.as_bytes()), Ok(()), "{doc}");
        assert!(serde_ok(doc.as_bytes()), "{doc}");
    }
}

#[test]
fn refuses_invalid_documents_with_a_position() {
    for (doc, what) in [
        ("{oops}", "key must be a string"),
        ("{\"a\" 1}", "expected ':'"),
        ("{\"a\":1,}", "key must be a string"),
        ("[1,]", "expected a value"),
        ("[1 2]", "expected ',' or ']'"),
        ("{\"a\":1 \"b\":2}", "expected ',' or '}'"),
        ("01", "trailing characters"),
        ("1.", "unexpected end of input"),
        ("-", "unexpected end of input"),
        ("\"a\tb\"", "control character in string"),
        ("\"\\x\"", "invalid escape"),
        ("\"\\u12g4\"", "invalid \\u escape"),
        ("tru", "expected a value"),
        ("{} {}", "trailing characters"),
        ("{\"a\":", "unexpected end of input"),
        ("\"abc", "unexpected end of input"),
    ] {
        let e = validate(doc.as_bytes()).unwrap_err();
        assert_eq!(e.what, what, "{doc}");
        assert!(!serde_ok(doc.as_bytes()), "serde accepts {doc}");
    }
    assert_eq!(validate(b"\xff").unwrap_err().what, "invalid UTF-8");
    let deep = "[".repeat(200) + &"]".repeat(200);
    assert!(validate(deep.as_bytes()).is_err());
    let ok_deep = "[".repeat(100) + &"]".repeat(100);
    assert!(validate(ok_deep.as_bytes()).is_ok());
}

fn token() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        " ",
        "\n",
        "\"k\"",
        "\"\\u00e9\"",
        "\"\\\\\"",
        "\"\\t\"",
        "0",
        "12",
        "-3",
        "4.5",
        "6e7",
        "-0.1E-2",
        "true",
        "false",
        "null",
        "01",
        "1.",
        "-",
        "\"\\x\"",
        "\"\t\"",
        "\"open",
        "tru",
        "e",
        ".",
        "+1",
    ])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    /// The validator agrees with serde_json on documents built from JSON fragments.
    #[test]
    fn agrees_with_serde_json(tokens in prop::collection::vec(token(), 0..24)) {
        let doc = tokens.concat();
        prop_assert_eq!(validate(doc.as_bytes()).is_ok(), serde_ok(doc.as_bytes()), "{:?}", doc);
    }
}
