//! Helpers shared by the tests that drive axum apps (`tower_sessions.rs`, `redis.rs`).

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use tower::ServiceExt;

/// A handler that counts the requests of a session in its `n` field and answers the count.
pub async fn count(session: tower_sessions::Session) -> String {
    let n: u64 = session.get("n").await.unwrap().unwrap_or(0) + 1;
    session.insert("n", n).await.unwrap();
    n.to_string()
}

/// One request, with the `id` cookie if given; returns the body and the `id` cookie the
/// response set, if any.
pub async fn call(app: &Router, path: &str, cookie: Option<&str>) -> (String, Option<String>) {
    let mut request = Request::builder().uri(path);
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, format!("id={cookie}"));
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let set_cookie = response
        .headers()
        .get(header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .and_then(|v| v.trim().strip_prefix("id="))
        .map(str::to_string);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (String::from_utf8(body.to_vec()).unwrap(), set_cookie)
}
