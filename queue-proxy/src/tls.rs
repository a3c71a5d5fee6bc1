//! The TLS listener's configuration: certificates from the certs directory, reloaded on change,
//! and `QUEUE_PROXY_TLS_*` mapped onto what rustls offers.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use rustls::{
    ServerConfig, SupportedProtocolVersion,
    crypto::CryptoProvider,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

use crate::config::TlsEnv;

/// How often the certificate files are re-read (upstream: every minute).
const RELOAD_EVERY: Duration = Duration::from_secs(10);

/// The certificate and key paths, if both exist.
pub(crate) fn cert_files(dir: &Path) -> Option<(PathBuf, PathBuf)> {
    let (crt, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    (crt.is_file() && key.is_file()).then_some((crt, key))
}

#[derive(Debug)]
struct Reloading {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

fn load(
    provider: &CryptoProvider,
    crt: &Path,
    key: &Path,
) -> Result<(Arc<CertifiedKey>, Vec<u8>), String> {
    let crt_pem = std::fs::read(crt).map_err(|e| format!("{}: {e}", crt.display()))?;
    let key_pem = std::fs::read(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let certs = rustls_pemfile::certs(&mut &crt_pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", crt.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate", crt.display()));
    }
    let private = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|e| format!("{}: {e}", key.display()))?
        .ok_or_else(|| format!("{}: no private key", key.display()))?;
    let signing = provider
        .key_provider
        .load_private_key(private)
        .map_err(|e| format!("{}: {e}", key.display()))?;
    let mut fingerprint = crt_pem;
    fingerprint.extend_from_slice(&key_pem);
    Ok((Arc::new(CertifiedKey::new(certs, signing)), fingerprint))
}

/// Builds the server configuration and starts a task that reloads the certificate when the files
/// change. Settings rustls cannot honour are logged as warnings, never fatal.
pub(crate) fn server_config(
    env: &TlsEnv,
    crt: PathBuf,
    key: PathBuf,
) -> Result<Arc<ServerConfig>, String> {
    let (provider, versions) = provider(env);
    let provider = Arc::new(provider);
    let (first, mut fingerprint) = load(&provider, &crt, &key)?;
    let resolver = Arc::new(Reloading {
        current: RwLock::new(first),
    });
    let mut config = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| format!("TLS settings: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(RELOAD_EVERY);
        tick.tick().await;
        loop {
            tick.tick().await;
            match load(&provider, &crt, &key) {
                Ok((_, fp)) if fp == fingerprint => {}
                Ok((ck, fp)) => {
                    *resolver.current.write().unwrap_or_else(|e| e.into_inner()) = ck;
                    fingerprint = fp;
                    tracing::info!("reloaded TLS certificate");
                }
                Err(e) => tracing::warn!(error = %e, "keeping the previous TLS certificate"),
            }
        }
    });
    Ok(Arc::new(config))
}

fn version(
    v: &str,
    key: &str,
    default: &'static SupportedProtocolVersion,
) -> &'static SupportedProtocolVersion {
    match v.trim() {
        "" => default,
        "1.2" => &rustls::version::TLS12,
        "1.3" => &rustls::version::TLS13,
        other => {
            tracing::warn!(
                "{key}={other:?} cannot be honoured (rustls offers TLS 1.2 and 1.3); using {default:?}"
            );
            default
        }
    }
}

/// The crypto provider and protocol versions for `env`.
fn provider(env: &TlsEnv) -> (CryptoProvider, Vec<&'static SupportedProtocolVersion>) {
    let mut provider = rustls::crypto::ring::default_provider();
    let min = version(
        &env.min_version,
        "QUEUE_PROXY_TLS_MIN_VERSION",
        &rustls::version::TLS13,
    );
    let max = version(
        &env.max_version,
        "QUEUE_PROXY_TLS_MAX_VERSION",
        &rustls::version::TLS13,
    );
    let rank =
        |v: &SupportedProtocolVersion| u8::from(v.version == rustls::ProtocolVersion::TLSv1_3);
    let versions: Vec<_> = [&rustls::version::TLS12, &rustls::version::TLS13]
        .into_iter()
        .filter(|v| rank(v) >= rank(min) && rank(v) <= rank(max))
        .collect();
    let versions = if versions.is_empty() {
        tracing::warn!(
            "QUEUE_PROXY_TLS_MIN_VERSION is above QUEUE_PROXY_TLS_MAX_VERSION; using TLS 1.3"
        );
        vec![&rustls::version::TLS13]
    } else {
        versions
    };

    let wanted: Vec<String> = env
        .cipher_suites
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    if !wanted.is_empty() {
        let name = |s: &rustls::SupportedCipherSuite| format!("{:?}", s.suite());
        let mut unknown = Vec::new();
        for w in &wanted {
            // Go also names the ChaCha suites without their hash.
            let matches = |s: &rustls::SupportedCipherSuite| {
                name(s) == *w || name(s) == format!("{w}_SHA256")
            };
            if !provider.cipher_suites.iter().any(matches) {
                unknown.push(w.clone());
            }
        }
        if !unknown.is_empty() {
            tracing::warn!(
                "QUEUE_PROXY_TLS_CIPHER_SUITES: rustls cannot offer {}; ignoring them",
                unknown.join(", ")
            );
        }
        // Go's list only governs TLS 1.2; TLS 1.3 suites always stay.
        provider.cipher_suites.retain(|s| {
            s.version() == &rustls::version::TLS13
                || wanted
                    .iter()
                    .any(|w| name(s) == *w || name(s) == format!("{w}_SHA256"))
        });
    }

    let curves: Vec<String> = env
        .curve_preferences
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    if !curves.is_empty() {
        let mut groups = Vec::new();
        let mut unknown = Vec::new();
        for c in &curves {
            let group = match c.as_str() {
                "X25519" => Some(rustls::NamedGroup::X25519),
                "CurveP256" | "P-256" => Some(rustls::NamedGroup::secp256r1),
                "CurveP384" | "P-384" => Some(rustls::NamedGroup::secp384r1),
                _ => None,
            };
            match group.and_then(|g| provider.kx_groups.iter().find(|k| k.name() == g)) {
                Some(k) => groups.push(*k),
                None => unknown.push(c.clone()),
            }
        }
        if !unknown.is_empty() {
            tracing::warn!(
                "QUEUE_PROXY_TLS_CURVE_PREFERENCES: rustls cannot offer {}; ignoring them",
                unknown.join(", ")
            );
        }
        if groups.is_empty() {
            tracing::warn!(
                "QUEUE_PROXY_TLS_CURVE_PREFERENCES names no curve rustls offers; keeping the defaults"
            );
        } else {
            provider.kx_groups = groups;
        }
    }
    (provider, versions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_only_settings_are_dropped_not_fatal() {
        let env = TlsEnv {
            min_version: "1.2".into(),
            max_version: "".into(),
            cipher_suites: "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,TLS_RSA_WITH_RC4_128_SHA".into(),
            curve_preferences: "X25519MLKEM768,CurveP256".into(),
        };
        let (p, versions) = provider(&env);
        assert_eq!(versions.len(), 2);
        assert_eq!(p.kx_groups.len(), 1);
        assert!(
            p.cipher_suites
                .iter()
                .any(|s| format!("{:?}", s.suite()) == "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256")
        );
        assert!(
            !p.cipher_suites
                .iter()
                .any(|s| format!("{:?}", s.suite()) == "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384")
        );
    }
}
