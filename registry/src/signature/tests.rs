use super::{
    C_SDK_TIMESTAMP, ClientId, DeviceLogin, MAX_CID_CHARS, SdkShape, SecureMode, SignMethod,
    SignatureError, SignedConnect, Username, content, sign, sign_connect, verify,
};

const SHA1_CONTENT: &str = "clientId12345deviceNamedeviceproductKeypktimestamp789";
const SHA1_PASSWORD: &str = "FAFD82A3D602B37FB0FA8B7892F24A477F851A14";

const C_PK: &str = "a13FN5TplKq";
const C_DN: &str = "bootstrap_posix_demo";
const C_SECRET: &str = "pZeRIoLApMRp2i1LAD4D5FREp3yPVBwy";
const C_CLIENT_ID: &str = "a13FN5TplKq.bootstrap_posix_demo|timestamp=2524608000000,_ss=1,_v=sdk-c-4.1.0,securemode=3,signmethod=hmacsha256,ext=3,_conn=tls_0|";
const C_USERNAME: &str = "bootstrap_posix_demo&a13FN5TplKq";
const C_PASSWORD: &str = "0B8307DDC1BE4049045F3FAC6F9ED3DA0F11C58451F243004E711000144031D1";

// --- PROTOCOL §2 test vectors -------------------------------------------------------------------

#[test]
fn sha1_vector_signs_lower_case() {
    assert_eq!(content("12345", "device", "pk", Some("789")), SHA1_CONTENT);
    assert_eq!(
        sign(SignMethod::HmacSha1, b"secret", SHA1_CONTENT),
        SHA1_PASSWORD.to_ascii_lowercase()
    );
}

#[test]
fn sha1_vector_verifies_in_any_case() {
    let lower = SHA1_PASSWORD.to_ascii_lowercase();
    let mixed: String = SHA1_PASSWORD
        .chars()
        .enumerate()
        .map(|(i, c)| if i % 2 == 0 { c.to_ascii_lowercase() } else { c })
        .collect();
    for password in [SHA1_PASSWORD, lower.as_str(), mixed.as_str()] {
        assert!(verify(SignMethod::HmacSha1, b"secret", SHA1_CONTENT, password), "{password}");
    }
}

#[test]
fn c_sdk_capture_verifies() {
    let login = DeviceLogin::parse(C_CLIENT_ID, C_USERNAME).expect("capture parses");
    assert!(login.verify(C_SECRET.as_bytes(), C_PASSWORD.as_bytes()));
    assert!(login.verify(C_SECRET.as_bytes(), C_PASSWORD.to_ascii_lowercase().as_bytes()));
    assert_eq!(
        login.content(),
        "clientIda13FN5TplKq.bootstrap_posix_demodeviceNamebootstrap_posix_demoproductKeya13FN5TplKqtimestamp2524608000000"
    );
}

#[test]
fn c_sdk_capture_parses_every_known_key() {
    let login = DeviceLogin::parse(C_CLIENT_ID, C_USERNAME).expect("capture parses");
    let expected = ClientId {
        cid: "a13FN5TplKq.bootstrap_posix_demo".to_owned(),
        sign_method: SignMethod::HmacSha256,
        secure_mode: Some(SecureMode::Plain),
        timestamp: Some(C_SDK_TIMESTAMP.to_owned()),
        instance_id: None,
        auth_type: None,
        ss: Some("1".to_owned()),
        sdk_version: Some("sdk-c-4.1.0".to_owned()),
        ext: Some("3".to_owned()),
        lan: None,
        conn: Some("tls_0".to_owned()),
    };
    assert_eq!(login.client_id, expected);
    assert_eq!(
        login.username,
        Username { device_name: C_DN.to_owned(), product_key: C_PK.to_owned() }
    );
}

#[test]
fn sign_connect_c_sdk_reproduces_capture() {
    let expected = SignedConnect {
        client_id: C_CLIENT_ID.to_owned(),
        username: C_USERNAME.to_owned(),
        password: C_PASSWORD.to_owned(),
    };
    assert_eq!(sign_connect(SdkShape::CSdk, C_PK, C_DN, C_SECRET, None), expected);
    assert_eq!(sign_connect(SdkShape::CSdk, C_PK, C_DN, C_SECRET, Some(C_SDK_TIMESTAMP)), expected);
}

#[test]
fn mqtt5_assigned_id_has_empty_cid() {
    let login =
        DeviceLogin::parse("|timestamp=789,signmethod=hmacsha1|", "device&pk").expect("parses");
    assert_eq!(login.client_id.cid, "");
    assert_eq!(login.content(), "clientIddeviceNamedeviceproductKeypktimestamp789");
    let password = sign(SignMethod::HmacSha1, b"secret", &login.content());
    assert!(login.verify(b"secret", password.as_bytes()));
}

// --- SDK shapes round trip --------------------------------------------------------------------

#[test]
fn python_shape_round_trips() {
    let signed = sign_connect(SdkShape::Python, "pk1", "dev1", "s3cret", Some("1700000000"));
    assert_eq!(signed.client_id, "pk1&dev1|securemode=3,signmethod=hmacsha1,timestamp=1700000000|");
    assert_eq!(signed.username, "dev1&pk1");
    assert_eq!(signed.password, signed.password.to_ascii_lowercase());
    assert_eq!(signed.password.len(), 40);

    let login = DeviceLogin::parse(&signed.client_id, &signed.username).expect("parses");
    assert_eq!(login.client_id.cid, "pk1&dev1");
    assert_eq!(login.client_id.sign_method, SignMethod::HmacSha1);
    assert_eq!(login.client_id.timestamp.as_deref(), Some("1700000000"));
    assert!(login.verify(b"s3cret", signed.password.as_bytes()));
    assert!(!login.verify(b"other", signed.password.as_bytes()));
}

#[test]
fn node_shape_keeps_pipe_inside_lan() {
    let signed = sign_connect(SdkShape::Node, "pk1", "dev1", "s3cret", Some("1700000000000"));
    assert_eq!(
        signed.client_id,
        "pk1&dev1|timestamp=1700000000000,securemode=2,signmethod=hmacsha256,lan=JS|WX,ext=1|"
    );
    assert_eq!(signed.password, signed.password.to_ascii_lowercase());
    assert_eq!(signed.password.len(), 64);

    let login = DeviceLogin::parse(&signed.client_id, &signed.username).expect("parses");
    assert_eq!(login.client_id.lan.as_deref(), Some("JS|WX"));
    assert_eq!(login.client_id.ext.as_deref(), Some("1"));
    assert_eq!(login.client_id.secure_mode, Some(SecureMode::Tls));
    assert_eq!(login.client_id.sign_method, SignMethod::HmacSha256);
    assert!(login.verify(b"s3cret", signed.password.as_bytes()));
}

#[test]
fn lan_with_pipe_as_last_parameter() {
    let id = ClientId::parse("c|signmethod=hmacsha1,lan=JS|WX|").expect("parses");
    assert_eq!(id.lan.as_deref(), Some("JS|WX"));
    assert_eq!(id.sign_method, SignMethod::HmacSha1);
}

#[test]
fn shapes_without_timestamp_omit_it() {
    for shape in [SdkShape::Python, SdkShape::Node] {
        let signed = sign_connect(shape, "pk1", "dev1", "s3cret", None);
        assert!(!signed.client_id.contains("timestamp"), "{shape:?}");
        let login = DeviceLogin::parse(&signed.client_id, &signed.username).expect("parses");
        assert_eq!(login.client_id.timestamp, None);
        assert_eq!(login.content(), "clientIdpk1&dev1deviceNamedev1productKeypk1");
        assert!(login.verify(b"s3cret", signed.password.as_bytes()), "{shape:?}");
    }
}

#[test]
fn c_sdk_shape_uses_given_timestamp() {
    let signed = sign_connect(SdkShape::CSdk, "pk1", "dev1", "s3cret", Some("42"));
    assert!(signed.client_id.starts_with("pk1.dev1|timestamp=42,_ss=1,"));
    assert_eq!(signed.password, signed.password.to_ascii_uppercase());
    let login = DeviceLogin::parse(&signed.client_id, &signed.username).expect("parses");
    assert!(login.verify(b"s3cret", signed.password.as_bytes()));
}

// --- HMACs --------------------------------------------------------------------------------------

#[test]
fn rfc_vectors_for_every_method() {
    // RFC 2202 / RFC 4231 test case 2: key "Jefe".
    let data = "what do ya want for nothing?";
    let cases = [
        (SignMethod::HmacMd5, "750c783e6ab0b503eaa86e310a5db738"),
        (SignMethod::HmacSha1, "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"),
        (
            SignMethod::HmacSha256,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
        ),
    ];
    for (method, expected) in cases {
        assert_eq!(sign(method, b"Jefe", data), expected, "{method}");
        assert!(verify(method, b"Jefe", data, expected), "{method}");
        assert!(!verify(method, b"Jefe", data, &expected.to_ascii_uppercase()[1..]), "{method}");
    }
}

#[test]
fn long_secret_is_accepted() {
    let secret = [7u8; 200];
    let password = sign(SignMethod::HmacSha256, &secret, "c");
    assert!(verify(SignMethod::HmacSha256, &secret, "c", &password));
}

// --- defaults and tolerated input -------------------------------------------------------------

#[test]
fn hmacmd5_is_default_when_signmethod_absent() {
    let login = DeviceLogin::parse("dev1|securemode=3,timestamp=1|", "dev1&pk1").expect("parses");
    assert_eq!(login.client_id.sign_method, SignMethod::HmacMd5);
    let md5 = sign(SignMethod::HmacMd5, b"s", &login.content());
    let sha1 = sign(SignMethod::HmacSha1, b"s", &login.content());
    assert!(login.verify(b"s", md5.as_bytes()));
    assert!(!login.verify(b"s", sha1.as_bytes()));
}

#[test]
fn client_id_without_pipe_is_a_bare_cid() {
    let id = ClientId::parse("just-a-device").expect("parses");
    assert_eq!(id, ClientId { cid: "just-a-device".to_owned(), ..ClientId::default() });
    assert_eq!(id.sign_method, SignMethod::HmacMd5);
    assert_eq!(id.timestamp, None);
}

#[test]
fn unknown_keys_empty_pairs_and_empty_blocks_are_ignored() {
    let id = ClientId::parse("c|gw=0,,signmethod=hmacsha1,future=a=b,|").expect("parses");
    assert_eq!(id.sign_method, SignMethod::HmacSha1);
    assert_eq!(id.cid, "c");

    let empty = ClientId::parse("c||").expect("parses");
    assert_eq!(empty.cid, "c");
    assert_eq!(empty.sign_method, SignMethod::HmacMd5);
}

#[test]
fn instance_id_and_auth_type_are_parsed() {
    let id =
        ClientId::parse("c|instanceId=iot-01,authType=register,securemode=-1|").expect("parses");
    assert_eq!(id.instance_id.as_deref(), Some("iot-01"));
    assert_eq!(id.auth_type.as_deref(), Some("register"));
    assert_eq!(id.secure_mode, Some(SecureMode::Legacy));

    let other = ClientId::parse("c|securemode=8|").expect("parses");
    assert_eq!(other.secure_mode, Some(SecureMode::Other(8)));
}

#[test]
fn sign_method_names_are_case_insensitive() {
    for method in [SignMethod::HmacMd5, SignMethod::HmacSha1, SignMethod::HmacSha256] {
        assert_eq!(method.as_str().parse::<SignMethod>(), Ok(method));
        assert_eq!(method.as_str().to_ascii_uppercase().parse::<SignMethod>(), Ok(method));
    }
    let id = ClientId::parse("c|signmethod=HmacSHA256|").expect("parses");
    assert_eq!(id.sign_method, SignMethod::HmacSha256);
}

#[test]
fn secure_mode_codes_round_trip() {
    for code in [2, 3, -1, 8] {
        assert_eq!(SecureMode::from_code(code).code(), code);
    }
    assert_eq!("2".parse::<SecureMode>(), Ok(SecureMode::Tls));
    assert_eq!("3".parse::<SecureMode>(), Ok(SecureMode::Plain));
}

#[test]
fn cid_length_is_counted_in_characters() {
    let ascii = "a".repeat(MAX_CID_CHARS);
    assert!(ClientId::parse(&format!("{ascii}|signmethod=hmacsha1|")).is_ok());
    // 64 two-byte characters are 128 bytes but still 64 characters.
    let wide = "é".repeat(MAX_CID_CHARS);
    assert!(ClientId::parse(&wide).is_ok());
}

// --- rejected passwords -------------------------------------------------------------------------

#[test]
fn wrong_passwords_are_rejected() {
    let login = DeviceLogin::parse(C_CLIENT_ID, C_USERNAME).expect("capture parses");
    let secret = C_SECRET.as_bytes();

    assert!(!login.verify(b"pZeRIoLApMRp2i1LAD4D5FREp3yPVBwz", C_PASSWORD.as_bytes()));

    let mut flipped = C_PASSWORD.to_owned();
    flipped.replace_range(10..11, "0");
    assert_ne!(flipped, C_PASSWORD);
    assert!(!login.verify(secret, flipped.as_bytes()));

    let truncated = &C_PASSWORD[..C_PASSWORD.len() - 2];
    assert!(!login.verify(secret, truncated.as_bytes()));
    let odd = &C_PASSWORD[..C_PASSWORD.len() - 1];
    assert!(!login.verify(secret, odd.as_bytes()));
    let extended = format!("{C_PASSWORD}00");
    assert!(!login.verify(secret, extended.as_bytes()));

    let non_hex = format!("{}ZZ", &C_PASSWORD[..C_PASSWORD.len() - 2]);
    assert!(!login.verify(secret, non_hex.as_bytes()));

    assert!(!login.verify(secret, b""));
    assert!(!login.verify(secret, &[0xff, 0xfe, 0x00]));
    assert!(!login.verify(secret, C_SECRET.as_bytes()));
}

#[test]
fn verify_rejects_malformed_hex_without_panicking() {
    for password in ["", "0", "zz", "  ", "0x00", "fafd82a3d602b37fb0fa8b7892f24a477f851a1"] {
        assert!(!verify(SignMethod::HmacSha1, b"secret", SHA1_CONTENT, password), "{password:?}");
    }
}

#[test]
fn empty_secret_never_verifies() {
    let password = sign(SignMethod::HmacSha1, b"", SHA1_CONTENT);
    assert!(!verify(SignMethod::HmacSha1, b"", SHA1_CONTENT, &password));
}

#[test]
fn signed_connect_debug_hides_password() {
    let signed = sign_connect(SdkShape::CSdk, C_PK, C_DN, C_SECRET, None);
    let debug = format!("{signed:?}");
    assert!(!debug.contains(C_PASSWORD), "{debug}");
    assert!(!debug.contains(C_SECRET), "{debug}");
    assert!(debug.contains(C_USERNAME), "{debug}");
}

// --- every SignatureError -------------------------------------------------------------------------

#[test]
fn cid_of_65_chars_is_rejected() {
    let cid = "a".repeat(MAX_CID_CHARS + 1);
    assert_eq!(
        ClientId::parse(&format!("{cid}|signmethod=hmacsha1|")),
        Err(SignatureError::CidTooLong { chars: 65 })
    );
    assert_eq!(ClientId::parse(&cid), Err(SignatureError::CidTooLong { chars: 65 }));
}

#[test]
fn parameter_block_must_be_terminated() {
    assert_eq!(
        ClientId::parse("c|signmethod=hmacsha1"),
        Err(SignatureError::UnterminatedParameters)
    );
    assert_eq!(ClientId::parse("|"), Err(SignatureError::UnterminatedParameters));
}

#[test]
fn nothing_may_follow_the_block() {
    assert_eq!(
        ClientId::parse("c|signmethod=hmacsha1|x"),
        Err(SignatureError::TrailingAfterParameters)
    );
}

#[test]
fn parameter_needs_equals() {
    assert_eq!(
        ClientId::parse("c|signmethod=hmacsha1,securemode|"),
        Err(SignatureError::ParameterWithoutEquals { index: 1 })
    );
}

#[test]
fn known_parameter_twice_is_rejected() {
    assert_eq!(
        ClientId::parse("c|timestamp=1,timestamp=2|"),
        Err(SignatureError::DuplicateParameter { key: "timestamp" })
    );
    assert_eq!(
        ClientId::parse("c|signmethod=hmacmd5,signmethod=hmacsha1|"),
        Err(SignatureError::DuplicateParameter { key: "signmethod" })
    );
}

#[test]
fn unknown_signmethod_is_rejected() {
    assert_eq!(
        ClientId::parse("c|signmethod=hmacsha512|"),
        Err(SignatureError::UnknownSignMethod("hmacsha512".to_owned()))
    );
    assert_eq!(
        ClientId::parse("c|signmethod=|"),
        Err(SignatureError::UnknownSignMethod(String::new()))
    );
}

#[test]
fn non_integer_securemode_is_rejected() {
    assert_eq!(ClientId::parse("c|securemode=tls|"), Err(SignatureError::InvalidSecureMode));
}

#[test]
fn username_errors() {
    assert_eq!(Username::parse("devicepk"), Err(SignatureError::UsernameWithoutSeparator));
    assert_eq!(Username::parse("&pk"), Err(SignatureError::EmptyDeviceName));
    assert_eq!(Username::parse("device&"), Err(SignatureError::EmptyProductKey));
    assert_eq!(DeviceLogin::parse("c", "device"), Err(SignatureError::UsernameWithoutSeparator));
    assert_eq!(DeviceLogin::parse("c|x", "device&pk"), Err(SignatureError::UnterminatedParameters));
}

#[test]
fn error_messages_are_plain_text() {
    // Errors are shown to operators; they must say what was wrong without echoing credentials.
    let err = ClientId::parse(&"a".repeat(70)).expect_err("too long");
    assert_eq!(err.to_string(), "clientId cid is 70 characters, at most 64 are allowed");
    assert_eq!(SignatureError::EmptyProductKey.to_string(), "username has an empty productKey");
}
