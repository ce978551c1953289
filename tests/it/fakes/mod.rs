//! Local stand-ins that speak the real wire protocols.

pub mod comfyui;
pub mod dashscope;
pub mod discord;
pub mod images;
pub mod multipart;
pub mod openai;
pub mod telegram;

/// Serves `app` on a free port of 127.0.0.1 until the test's runtime ends, with a 64 MB body
/// limit (uploads of large images); returns its address.
pub async fn serve(app: axum::Router) -> std::net::SocketAddr {
    let app = app.layer(axum::extract::DefaultBodyLimit::max(64 * 1024 * 1024));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}
