//! The store behind actix-session in an actix-web app, through actix-web's test utilities:
//! login-style insert, read back, renew, purge, expiry by the time to live.

use std::time::Duration;

use actix_session::config::PersistentSession;
use actix_session::storage::SessionStore;
use actix_session::{Session, SessionMiddleware};
use actix_web::cookie::{Cookie, Key};
use actix_web::{App, HttpResponse, test, web};
use evanesce::integrations::actix_session::{StateStore, state_store};
use quanta::Clock;

const TTL_SECS: i64 = 60;

async fn login(session: Session) -> HttpResponse {
    session.insert("user", "alice").unwrap();
    HttpResponse::Ok().body("logged in")
}

async fn me(session: Session) -> HttpResponse {
    let user: Option<String> = session.get("user").unwrap();
    HttpResponse::Ok().body(user.unwrap_or_else(|| "anonymous".into()))
}

async fn renew(session: Session) -> HttpResponse {
    session.renew();
    HttpResponse::Ok().body("renewed")
}

async fn logout(session: Session) -> HttpResponse {
    session.purge();
    HttpResponse::Ok().body("bye")
}

macro_rules! app {
    ($store:expr, $key:expr) => {
        test::init_service(
            App::new()
                .wrap(
                    SessionMiddleware::builder($store.clone(), $key.clone())
                        .cookie_secure(false)
                        .session_lifecycle(
                            PersistentSession::default()
                                .session_ttl(actix_web::cookie::time::Duration::seconds(TTL_SECS)),
                        )
                        .build(),
                )
                .route("/login", web::get().to(login))
                .route("/me", web::get().to(me))
                .route("/renew", web::get().to(renew))
                .route("/logout", web::get().to(logout)),
        )
        .await
    };
}

/// Sends a request with `cookie`; returns the body and the session cookie set, if any.
macro_rules! call {
    ($app:expr, $path:expr, $cookie:expr) => {{
        let mut request = test::TestRequest::get().uri($path);
        if let Some(cookie) = $cookie {
            request = request.cookie(Cookie::clone(cookie));
        }
        let response = test::call_service(&$app, request.to_request()).await;
        assert!(response.status().is_success());
        let set = response
            .response()
            .cookies()
            .find(|c| c.name() == "id")
            .map(|c| c.into_owned());
        let body = test::read_body(response).await;
        (String::from_utf8(body.to_vec()).unwrap(), set)
    }};
}

fn mock_store() -> (StateStore, std::sync::Arc<quanta::Mock>) {
    let (clock, mock) = Clock::mock();
    (state_store().clock(clock).build().unwrap(), mock)
}

#[actix_web::test]
async fn login_read_back_renew_and_purge() {
    let (store, _) = mock_store();
    let key = Key::generate();
    let app = app!(store, key);

    let (_, cookie) = call!(app, "/login", None::<&Cookie>);
    let cookie = cookie.expect("login sets the session cookie");
    assert_eq!(store.length(), 1);
    assert_eq!(call!(app, "/me", Some(&cookie)).0, "alice");

    let old_keys = store.ids();
    let (_, renewed) = call!(app, "/renew", Some(&cookie));
    let renewed = renewed.expect("renew sets a new cookie");
    assert_eq!(call!(app, "/me", Some(&renewed)).0, "alice", "state moved");
    assert_eq!(store.length(), 1, "the old key was deleted");
    assert_ne!(store.ids(), old_keys);
    assert_eq!(store.ids()[0].len(), 64, "a 64-character random key");

    let (_, removal) = call!(app, "/logout", Some(&renewed));
    assert!(removal.is_some(), "purge expires the cookie");
    assert_eq!(store.length(), 0);
    assert_eq!(call!(app, "/me", Some(&renewed)).0, "anonymous");
}

#[actix_web::test]
async fn a_session_expires_by_its_ttl() {
    let (store, mock) = mock_store();
    let key = Key::generate();
    let app = app!(store, key);
    let (_, cookie) = call!(app, "/login", None::<&Cookie>);
    let cookie = cookie.unwrap();
    mock.increment(Duration::from_secs(TTL_SECS as u64 - 5));
    assert_eq!(call!(app, "/me", Some(&cookie)).0, "alice");
    mock.increment(Duration::from_secs(10));
    store.prune();
    assert_eq!(store.length(), 0, "reclaimed without a read");
    assert_eq!(call!(app, "/me", Some(&cookie)).0, "anonymous");
}

#[actix_web::test]
async fn the_store_trait_directly() {
    let (store, mock) = mock_store();
    let ttl = actix_web::cookie::time::Duration::seconds(10);
    let mut state = std::collections::HashMap::new();
    state.insert("k".to_string(), "\"v\"".to_string());
    let key = store.save(state.clone(), &ttl).await.unwrap();
    assert_eq!(store.load(&key).await.unwrap(), Some(state.clone()));

    // update_ttl restarts the lifetime without touching the state.
    mock.increment(Duration::from_secs(8));
    store.update_ttl(&key, &ttl).await.unwrap();
    mock.increment(Duration::from_secs(8));
    assert_eq!(store.load(&key).await.unwrap(), Some(state.clone()));

    // update of a live key keeps the key; of an expired one, stores nothing (the state is
    // not brought back, under that key or another).
    state.insert("k".into(), "\"w\"".into());
    let same = store
        .update(String::from(key).try_into().unwrap(), state.clone(), &ttl)
        .await
        .unwrap();
    assert_eq!(store.load(&same).await.unwrap(), Some(state.clone()));
    mock.increment(Duration::from_secs(11));
    let old: String = same.into();
    let dead = store
        .update(old.clone().try_into().unwrap(), state.clone(), &ttl)
        .await
        .unwrap();
    assert_eq!(AsRef::<str>::as_ref(&dead), old);
    assert_eq!(store.load(&dead).await.unwrap(), None, "never brought back");
    assert_eq!(store.length(), 0, "nor saved under another key");

    let live = store.save(state.clone(), &ttl).await.unwrap();
    store.delete(&live).await.unwrap();
    assert_eq!(store.load(&live).await.unwrap(), None);
    // A key nobody issued loads nothing.
    let unknown = "x".repeat(64).try_into().unwrap();
    assert_eq!(store.load(&unknown).await.unwrap(), None);
}

/// Found while fixing the review of a334a6e (its finding 1, for actix-web): `update` of a key
/// that was gone (a logout that ran while the request held the session) saved the request's
/// state under a new key and handed that key to the request's client, so logout did not end
/// the login for whoever had a request in flight (a thief polling with a stolen cookie kept it
/// for good). Now the update stores nothing and the client keeps a dead key.
#[actix_web::test]
async fn a_request_racing_logout_cannot_keep_the_login() {
    use std::sync::Arc;
    use tokio::sync::Notify;

    #[derive(Clone)]
    struct Gates {
        loaded: Arc<Notify>,
        go: Arc<Notify>,
    }
    async fn slow(gates: web::Data<Gates>, session: Session) -> HttpResponse {
        let user: Option<String> = session.get("user").unwrap();
        gates.loaded.notify_one();
        gates.go.notified().await;
        session.insert("seen", true).unwrap();
        HttpResponse::Ok().body(user.unwrap_or_default())
    }
    let gates = Gates {
        loaded: Arc::new(Notify::new()),
        go: Arc::new(Notify::new()),
    };
    let (store, _) = mock_store();
    let key = Key::generate();
    let app = test::init_service(
        App::new()
            .app_data(web::Data::new(gates.clone()))
            .wrap(
                SessionMiddleware::builder(store.clone(), key.clone())
                    .cookie_secure(false)
                    .build(),
            )
            .route("/login", web::get().to(login))
            .route("/me", web::get().to(me))
            .route("/logout", web::get().to(logout))
            .route("/slow", web::get().to(slow)),
    )
    .await;
    for round in 0..10 {
        let (_, cookie) = call!(app, "/login", None::<&Cookie>);
        let cookie = cookie.unwrap();
        let (racing, _) = tokio::join!(async { call!(app, "/slow", Some(&cookie)) }, async {
            gates.loaded.notified().await;
            let out = call!(app, "/logout", Some(&cookie));
            gates.go.notify_one();
            out
        });
        let (body, kept) = racing;
        assert_eq!(
            body, "alice",
            "round {round}: the racing request was logged in"
        );
        assert_eq!(
            store.length(),
            0,
            "round {round}: a session outlived the logout"
        );
        if let Some(kept) = kept {
            assert_eq!(
                call!(app, "/me", Some(&kept)).0,
                "anonymous",
                "round {round}: the racing request's cookie kept the login"
            );
        }
        assert_eq!(call!(app, "/me", Some(&cookie)).0, "anonymous");
    }
}
