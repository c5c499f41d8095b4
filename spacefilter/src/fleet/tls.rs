//! TLS for the links: the CA that vouches for a server, and the client
//! certificate a server may ask for, read from PEM files once, at start.
//! Both links (etcd, CrowdSec) build their rustls configuration here; the
//! errors name the option that gave the file, for the caller to fix.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{
    CertificateDer, PrivateKeyDer,
    pem::{self, PemObject as _},
};

/// The files of a link's TLS options, `--<link>-cacert`, `--<link>-cert`
/// and `--<link>-key`.
#[derive(Clone, Debug, Default)]
pub struct TlsFiles {
    /// PEM CA certificates that vouch for the server (else the webpki
    /// roots).
    pub cacert: Option<PathBuf>,
    /// The client's PEM certificate (and any intermediates after it).
    pub cert: Option<PathBuf>,
    /// The client certificate's PEM private key.
    pub key: Option<PathBuf>,
}

impl TlsFiles {
    /// Whether any file is given.
    #[must_use]
    pub fn any(&self) -> bool {
        let Self { cacert, cert, key } = self;
        cacert.is_some() || cert.is_some() || key.is_some()
    }
}

/// The rustls configuration for `files`, whose options are named
/// `{link}-cacert` (`--etcd-cacert`, ...); `None` when no file is given
/// (the HTTP client's own, with the webpki roots).
pub(super) fn client_config(
    link: &str,
    files: &TlsFiles,
) -> Result<Option<Arc<ClientConfig>>, String> {
    if !files.any() {
        return Ok(None);
    }
    let TlsFiles { cacert, cert, key } = files;
    let mut roots = RootCertStore::empty();
    match cacert {
        Some(path) => {
            let flag = format!("{link}-cacert");
            for der in certificates(&flag, path)? {
                roots.add(der).map_err(|err| {
                    format!(
                        "{flag} {}: a certificate in it cannot vouch for a server ({err}); give the PEM of the CA that signed the servers' certificates",
                        path.display()
                    )
                })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|err| format!("{link}: TLS: {err}"))?
            .with_root_certificates(roots);
    let config = match (cert, key) {
        (Some(cert), Some(key)) => {
            let chain = certificates(&format!("{link}-cert"), cert)?;
            let der = private_key(&format!("{link}-key"), key)?;
            builder.with_client_auth_cert(chain, der).map_err(|err| {
                format!(
                    "{link}-cert {} with {link}-key {}: {err}; give the key the certificate was made for",
                    cert.display(),
                    key.display()
                )
            })?
        }
        (None, None) => builder.with_no_client_auth(),
        (Some(_), None) => {
            return Err(format!(
                "{link}-cert needs {link}-key: give the client certificate's private key too"
            ));
        }
        (None, Some(_)) => {
            return Err(format!(
                "{link}-key needs {link}-cert: give the client certificate the key is for"
            ));
        }
    };
    Ok(Some(Arc::new(config)))
}

/// Reads a file, naming the option and what to do if it cannot be read.
fn read(flag: &str, path: &Path) -> Result<Vec<u8>, String> {
    fs::read(path).map_err(|err| {
        format!(
            "{flag} {}: {err}; give a PEM file the daemon can read",
            path.display()
        )
    })
}

/// The certificates of a PEM file: at least one.
fn certificates(flag: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let text = read(flag, path)?;
    let ders = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, pem::Error>>()
        .map_err(|err| format!("{flag} {}: not PEM ({err})", path.display()))?;
    if ders.is_empty() {
        return Err(format!(
            "{flag} {}: holds no certificate; give a PEM file with \"-----BEGIN CERTIFICATE-----\" blocks",
            path.display()
        ));
    }
    Ok(ders)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
fn private_key(flag: &str, path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let text = read(flag, path)?;
    PrivateKeyDer::from_pem_slice(&text).map_err(|err| match err {
        pem::Error::NoItemsFound => format!(
            "{flag} {}: holds no private key; give the PEM key (\"-----BEGIN PRIVATE KEY-----\") of the client certificate",
            path.display()
        ),
        err => format!("{flag} {}: not a PEM private key ({err})", path.display()),
    })
}

/// Refuses TLS options for a link none of whose URLs is `https://`.
pub(super) fn check_scheme(link: &str, urls: &[String], files: &TlsFiles) -> Result<(), String> {
    let TlsFiles { cacert, cert, key } = files;
    let given = [("cacert", cacert), ("cert", cert), ("key", key)]
        .into_iter()
        .find_map(|(name, file)| file.as_ref().map(|_| name));
    if let (Some(name), Some(plain)) = (given, urls.iter().find(|u| u.starts_with("http://"))) {
        return Err(format!(
            "{link}-{name} is for https:// URLs, and {plain} is plain http: give the https:// URL of the same server, or leave the TLS options out"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(cacert: Option<&str>, cert: Option<&str>, key: Option<&str>) -> TlsFiles {
        TlsFiles {
            cacert: cacert.map(PathBuf::from),
            cert: cert.map(PathBuf::from),
            key: key.map(PathBuf::from),
        }
    }

    #[test]
    fn no_file_keeps_the_default() {
        assert!(
            client_config("--etcd", &files(None, None, None))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn bad_files_name_their_option() {
        let err = client_config("--etcd", &files(Some("/no/such/ca.pem"), None, None)).unwrap_err();
        assert!(err.starts_with("--etcd-cacert /no/such/ca.pem: "), "{err}");
        let err = client_config("--etcd", &files(Some("/dev/null"), None, None)).unwrap_err();
        assert!(err.contains("holds no certificate"), "{err}");
        let err = client_config("--crowdsec", &files(None, Some("/dev/null"), None)).unwrap_err();
        assert!(err.starts_with("--crowdsec-cert"), "{err}");
        let err = client_config("--etcd", &files(None, None, Some("/dev/null"))).unwrap_err();
        assert!(err.starts_with("--etcd-key needs --etcd-cert"), "{err}");
    }

    #[test]
    fn tls_options_want_https() {
        let urls = vec!["https://a:2379".to_owned(), "http://b:2379".to_owned()];
        let err = check_scheme("--etcd", &urls, &files(Some("ca.pem"), None, None)).unwrap_err();
        assert!(err.contains("--etcd-cacert is for https://"), "{err}");
        assert!(check_scheme("--etcd", &urls, &files(None, None, None)).is_ok());
        assert!(check_scheme("--etcd", &urls[..1], &files(Some("ca.pem"), None, None)).is_ok());
    }
}
