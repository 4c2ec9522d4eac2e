//! Cross-account verification codes (PROTOCOL §5) through the admin API: valid five minutes, good
//! for one task, and attempt-limited per attempting account. Wrong guesses lock out the
//! account that made them and nobody else: a griefer cannot burn the code a destination
//! handed to its partner, however often it guesses.

// Test helpers outside `#[test]` functions panic on failure by design.
#![allow(clippy::unwrap_used)]

// Each test file uses part of the shared support.
#[allow(dead_code)]
mod support;

use std::time::Duration;

use hyper::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use meridian_control::plane::{CODE_MAX_ATTEMPTS, CODE_VALIDITY};
use meridian_registry::clock::Clock;
use support::{Reply, Tenant, TestApi};

const PK: &str = "a13FN5TplKq";
const PK_MALLORY: &str = "m13FN5TplKq";
const PK_TRUDY: &str = "t13FN5TplKq";

/// `alpha` (the source the code is handed to), `bravo` (the destination, which asks for
/// codes) and two accounts that guess: `mallory` and `trudy`, each with a product of its own
/// to distribute.
struct World {
    api: TestApi,
    alpha: Tenant,
    bravo: Tenant,
    mallory: Tenant,
    trudy: Tenant,
}

async fn world() -> World {
    let api = TestApi::start().await;
    let alpha = api.tenant_with_product("alpha", PK).await;
    let bravo = api.tenant_with_product("bravo", "b13FN5TplKq").await;
    let mallory = api.tenant_with_product("mallory", PK_MALLORY).await;
    let trudy = api.tenant_with_product("trudy", PK_TRUDY).await;
    World { api, alpha, bravo, mallory, trudy }
}

impl World {
    /// A fresh code of bravo's.
    async fn code(&self) -> String {
        let reply = self.api.post_empty("/v1/verification-codes", &self.bravo.key).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
        let issued = reply.json();
        assert_eq!(issued["expiresInSeconds"], CODE_VALIDITY.as_secs());
        issued["code"].as_str().unwrap().to_owned()
    }

    /// `tenant` distributes its product to bravo with `code`.
    async fn submit(&self, tenant: &Tenant, code: &str) -> Reply {
        let product = if tenant.key == self.alpha.key {
            PK
        } else if tenant.key == self.mallory.key {
            PK_MALLORY
        } else {
            PK_TRUDY
        };
        let body = json!({ "product": product,
            "policy": { "kind": "specified", "instance": "bravo-fra" },
            "cross_account": { "account": "bravo", "code": code } });
        self.api.post("/v1/distribution-tasks", &tenant.key, body).await
    }

    /// `tenant` guesses wrong `times` times; returns the statuses.
    async fn guess_wrong(&self, tenant: &Tenant, code: &str, times: u32) -> Vec<StatusCode> {
        let wrong = wrong(code);
        let mut statuses = Vec::new();
        for _ in 0..times {
            statuses.push(self.submit(tenant, &wrong).await.status);
        }
        statuses
    }
}

/// A six-digit code that is not `code`.
fn wrong(code: &str) -> String {
    if code == "000000" { "111111".into() } else { "000000".into() }
}

/// What `CODE_MAX_ATTEMPTS` wrong guesses answer: 422 until the last, which locks.
fn locking() -> Vec<StatusCode> {
    let mut statuses = vec![StatusCode::UNPROCESSABLE_ENTITY; CODE_MAX_ATTEMPTS as usize - 1];
    statuses.push(StatusCode::TOO_MANY_REQUESTS);
    statuses
}

fn created(reply: &Reply) -> Value {
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    reply.json()
}

#[tokio::test]
async fn a_griefer_locks_out_only_itself() {
    let w = world().await;
    let code = w.code().await;

    // Mallory guesses until it is locked out; even the right code no longer works for it.
    assert_eq!(w.guess_wrong(&w.mallory, &code, CODE_MAX_ATTEMPTS).await, locking());
    let message = w.submit(&w.mallory, &code).await.error(StatusCode::TOO_MANY_REQUESTS);
    assert!(message.contains("too many attempts"), "{message}");
    assert_eq!(w.guess_wrong(&w.mallory, &code, 3).await, [StatusCode::TOO_MANY_REQUESTS; 3]);

    // Alpha, whom bravo gave the code, is unaffected.
    let task = created(&w.submit(&w.alpha, &code).await);
    assert_eq!(task["destination_account"], "bravo");
    // And bravo's own use of its codes (initiating an instance transfer) is unaffected too.
    let own = w.code().await;
    assert_eq!(w.guess_wrong(&w.mallory, &own, CODE_MAX_ATTEMPTS).await, locking());
    let reply = w
        .api
        .post(
            "/v1/instance-transfers",
            &w.bravo.key,
            json!({ "destination": "alpha", "instances": ["bravo-sh"], "code": own }),
        )
        .await;
    // The code passed; the instance is too young to transfer, which is the order's own result.
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["results"][0]["status"], 422);
}

#[tokio::test]
async fn every_attempter_has_its_own_limit() {
    let w = world().await;
    let code = w.code().await;
    assert_eq!(w.guess_wrong(&w.mallory, &code, CODE_MAX_ATTEMPTS).await, locking());
    // Trudy's attempts are her own: mallory's lock did not spend them.
    assert_eq!(
        w.guess_wrong(&w.trudy, &code, CODE_MAX_ATTEMPTS - 1).await,
        [StatusCode::UNPROCESSABLE_ENTITY; CODE_MAX_ATTEMPTS as usize - 1]
    );
    // Alpha mistypes all but once; its last allowed attempt may succeed.
    w.guess_wrong(&w.alpha, &code, CODE_MAX_ATTEMPTS - 1).await;
    created(&w.submit(&w.alpha, &code).await);

    // Alpha locked out of a code stays locked out of it, right code or not...
    let code = w.code().await;
    assert_eq!(w.guess_wrong(&w.alpha, &code, CODE_MAX_ATTEMPTS).await, locking());
    w.submit(&w.alpha, &code).await.error(StatusCode::TOO_MANY_REQUESTS);
    // ...until bravo hands it a new one. The locked code no longer answers anything but "no".
    let fresh = w.code().await;
    let message = w.submit(&w.alpha, &code).await.error(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(message, "verification code is invalid or expired");
    created(&w.submit(&w.alpha, &fresh).await);
    // Nobody else was locked out of the old code meanwhile.
    created(&w.submit(&w.trudy, &code).await);
}

#[tokio::test]
async fn codes_are_single_use() {
    let w = world().await;
    let code = w.code().await;
    created(&w.submit(&w.alpha, &code).await);
    for tenant in [&w.alpha, &w.mallory] {
        let message = w.submit(tenant, &code).await.error(StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(message, "verification code is invalid or expired");
    }
    // Two codes, two tasks; each code once.
    let (first, second) = (w.code().await, w.code().await);
    created(&w.submit(&w.alpha, &second).await);
    created(&w.submit(&w.trudy, &first).await);
    w.submit(&w.alpha, &first).await.error(StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn codes_expire_after_five_minutes() {
    let w = world().await;
    let code = w.code().await;
    w.api.clock.advance(CODE_VALIDITY - Duration::from_millis(1));
    created(&w.submit(&w.alpha, &code).await);

    let code = w.code().await;
    w.api.clock.advance(CODE_VALIDITY);
    let message = w.submit(&w.alpha, &code).await.error(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(message, "verification code is invalid or expired");
    // Guessing at expired codes locks nothing: there is nothing left to guess.
    let statuses = w.guess_wrong(&w.mallory, &code, 2 * CODE_MAX_ATTEMPTS).await;
    assert!(statuses.iter().all(|s| *s == StatusCode::UNPROCESSABLE_ENTITY), "{statuses:?}");
    created(&w.submit(&w.alpha, &w.code().await).await);
}

/// Attempts are counted before the code is compared, in one compare-and-swap per attempt:
/// guesses sent all at once get no more tries than guesses sent one by one.
#[tokio::test]
async fn concurrent_guesses_cannot_outrun_the_limit() {
    let w = world().await;
    let code = w.code().await;
    let wrong = wrong(&code);
    let guesses = (0..20).map(|_| w.submit(&w.mallory, &wrong));
    let statuses: Vec<StatusCode> =
        futures::future::join_all(guesses).await.into_iter().map(|reply| reply.status).collect();
    let checked = statuses.iter().filter(|s| **s == StatusCode::UNPROCESSABLE_ENTITY).count();
    let locked = statuses.iter().filter(|s| **s == StatusCode::TOO_MANY_REQUESTS).count();
    assert_eq!(
        (checked, locked),
        (CODE_MAX_ATTEMPTS as usize - 1, 20 + 1 - CODE_MAX_ATTEMPTS as usize)
    );
    w.submit(&w.mallory, &code).await.error(StatusCode::TOO_MANY_REQUESTS);
    created(&w.submit(&w.alpha, &code).await);
}

/// Codes and attempt counts live in the store, like every other control-plane record.
#[tokio::test]
async fn locks_and_codes_survive_a_restart() {
    let w = world().await;
    let code = w.code().await;
    assert_eq!(w.guess_wrong(&w.mallory, &code, CODE_MAX_ATTEMPTS).await, locking());
    let World { api, alpha, bravo, mallory, trudy } = w;
    let w = World { api: api.restart().await, alpha, bravo, mallory, trudy };
    w.submit(&w.mallory, &code).await.error(StatusCode::TOO_MANY_REQUESTS);
    created(&w.submit(&w.alpha, &code).await);
}

/// Codes stored before attempts were counted per account carry a shared `failed_attempts`
/// count. It is ignored: a code that a griefer had locked for everyone works again for the
/// account it was handed to, and attempts are counted afresh, per account.
#[tokio::test]
async fn codes_stored_by_earlier_versions_still_work() {
    let w = world().await;
    let code = "424242";
    let hash = hex::encode(Sha256::digest(code.as_bytes()));
    let expires_at = w.api.clock.now().0 + 60_000;
    let record = json!({ "account": "bravo", "hash": hash, "expires_at": expires_at,
        "failed_attempts": CODE_MAX_ATTEMPTS });
    let key = format!("codes/bravo/{}", &hash[..16]);
    w.api.plane.registry().store().put(&key, record.to_string().into()).await.unwrap();
    assert_eq!(w.guess_wrong(&w.mallory, code, CODE_MAX_ATTEMPTS).await, locking());
    created(&w.submit(&w.alpha, code).await);
}
