//! `health`: asks a running daemon's `GET /livez`, for Docker's `HEALTHCHECK` (the slim image
//! has no curl). Exit 0 when it answers 200 within 5 s, 1 otherwise.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use crate::config::Settings;

/// Probes `url`, or `/livez` on the config's `http.listen` (`0.0.0.0`/`::` mean this host).
pub async fn health(config: &Path, url: Option<String>) -> anyhow::Result<ExitCode> {
    let url = match url {
        Some(url) => url,
        None => livez_url(&Settings::load(config)?.config.http.listen)?,
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    match client.get(&url).send().await {
        Ok(r) if r.status().is_success() => {
            println!("ok: {url} answered {}", r.status().as_u16());
            Ok(ExitCode::SUCCESS)
        }
        Ok(r) => {
            eprintln!("unhealthy: {url} answered {}", r.status().as_u16());
            Ok(ExitCode::FAILURE)
        }
        Err(e) => {
            eprintln!("unhealthy: {url}: {}", e.without_url());
            Ok(ExitCode::FAILURE)
        }
    }
}

fn livez_url(listen: &str) -> anyhow::Result<String> {
    let addr: std::net::SocketAddr = listen.parse().map_err(|_| {
        anyhow::anyhow!(
            "http.listen = {listen:?}: the daemon has no HTTP endpoint to probe (give --url)"
        )
    })?;
    let host = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_owned(),
        ip if ip.is_unspecified() => "[::1]".to_owned(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    Ok(format!("http://{host}:{}/livez", addr.port()))
}
