//! Outgoing HTTP: every HTTP client Concierge makes (the LLM endpoint, marketplaces, Telegram
//! groups, the drill) starts here. TLS is rustls with one crypto backend, ring — the same one
//! sqlx and lettre use — installed as the process default before the first client is built, so
//! no second backend (aws-lc) is compiled in.

use std::sync::Once;

/// Makes ring rustls' process-wide crypto provider. Idempotent and cheap after the first call.
pub fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Err means a provider is already installed (by the embedding program): keep it.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A client builder with the crypto provider in place.
pub fn builder() -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder()
}

/// A client with default settings.
pub fn client() -> reqwest::Client {
    builder()
        .build()
        .expect("an HTTP client with default settings always builds once TLS is set up")
}
