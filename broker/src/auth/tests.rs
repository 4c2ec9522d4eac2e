//! Device authentication without sockets: an in-memory view and a verifier that records which
//! secret each CONNECT was checked with.

use std::cell::RefCell;

use meridian_registry::model::{DeviceStatus, Placement};
use meridian_registry::secret::DeviceSecret;
use meridian_registry::signature::{SdkShape, SignMethod, sign_connect};

use super::*;
use crate::view::{DeviceEntry, ProductEntry};

const PK: &str = "a13FN5TplKq";
const SECRET: &str = "pZeRIoLApMRp2i1LAD4D5FREp3yPVBwy";

thread_local! {
    /// (secret, sign method) of every HMAC the recording verifier computed on this thread.
    static CHECKED: RefCell<Vec<(Vec<u8>, SignMethod)>> = const { RefCell::new(Vec::new()) };
}

fn recording(login: &DeviceLogin, secret: &[u8], password: &[u8]) -> bool {
    CHECKED.with_borrow_mut(|checked| checked.push((secret.to_vec(), login.client_id.sign_method)));
    login.verify(secret, password)
}

fn checked() -> Vec<(Vec<u8>, SignMethod)> {
    CHECKED.with_borrow_mut(std::mem::take)
}

/// An authenticator for instance `iot-sh-1` knowing device `known` of [`PK`], homed there.
fn authenticator() -> Authenticator {
    let view = Arc::new(RegistryView::default());
    let owner: AccountId = "acme".parse().unwrap();
    view.apply_product(
        PK.parse().unwrap(),
        ProductEntry { owner: owner.clone(), home: "iot-sh-1".parse().unwrap() },
    );
    view.apply_device(
        DeviceKey { product_key: PK.parse().unwrap(), device_name: "known".parse().unwrap() },
        DeviceEntry {
            secret: DeviceSecret::new(SECRET).unwrap(),
            owner,
            status: DeviceStatus::Online,
            placement: Placement::Home,
        },
    );
    Authenticator::new(
        "iot-sh-1".parse().unwrap(),
        view,
        HashMap::new(),
        HashMap::new(),
        false,
        Profiles::from_limits(&crate::config::LimitsConfig::default()),
    )
    .with_verifier(recording)
}

fn login(
    authenticator: &Authenticator,
    shape: SdkShape,
    device: &str,
    secret: &str,
) -> Result<Accepted, ConnectReturnCode> {
    let signed = sign_connect(shape, PK, device, secret, None);
    authenticator.authenticate(Credentials {
        client_id: &signed.client_id,
        username: Some(&signed.username),
        password: Some(signed.password.as_bytes()),
        keep_alive: 60,
    })
}

/// SECURITY.md: an unknown device and a wrong password are indistinguishable. Both answer
/// CONNACK 4, and both cost one HMAC with the method the client asked for: the unknown device
/// against the stand-in key, the known one against its secret.
#[test]
fn unknown_devices_cost_the_same_hmac_as_wrong_passwords() {
    let authenticator = authenticator();
    for shape in [SdkShape::CSdk, SdkShape::Python, SdkShape::Node] {
        let method = sign_connect(shape, PK, "x", SECRET, None).client_id;
        let method = DeviceLogin::parse(&method, &format!("x&{PK}")).unwrap().client_id.sign_method;

        let wrong = login(&authenticator, shape, "known", "not-the-secret");
        assert_eq!(wrong, Err(ConnectReturnCode::BadUserNamePassword));
        assert_eq!(checked(), [(SECRET.as_bytes().to_vec(), method)], "{shape:?}: known device");

        let unknown = login(&authenticator, shape, "unknown", SECRET);
        assert_eq!(unknown, wrong, "{shape:?}: the same answer");
        assert_eq!(
            checked(),
            [(UNKNOWN_DEVICE_SECRET.to_vec(), method)],
            "{shape:?}: the unknown device's password was checked too, with the same method"
        );

        // A password made with the stand-in key admits no unknown device.
        let stand_in = std::str::from_utf8(UNKNOWN_DEVICE_SECRET).unwrap();
        assert_eq!(
            login(&authenticator, shape, "unknown", stand_in),
            Err(ConnectReturnCode::BadUserNamePassword)
        );
        assert_eq!(checked().len(), 1);

        let right = login(&authenticator, shape, "known", SECRET).expect("the right secret");
        assert_eq!(right.principal.device().map(|d| d.device_name.as_str()), Some("known"));
        assert_eq!(checked().len(), 1);
    }
    // A device name no device can have is an unknown device too.
    let signed = sign_connect(SdkShape::CSdk, PK, "bad name", SECRET, None);
    let refused = authenticator.authenticate(Credentials {
        client_id: &signed.client_id,
        username: Some(&signed.username),
        password: Some(signed.password.as_bytes()),
        keep_alive: 60,
    });
    assert_eq!(refused.map(drop), Err(ConnectReturnCode::BadUserNamePassword));
    assert_eq!(checked().len(), 1, "one HMAC for an impossible name as well");
}
