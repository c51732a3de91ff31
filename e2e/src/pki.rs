//! Throwaway certificates for a local stack: a certificate authority made for the run, a
//! server certificate for `127.0.0.1` that every core presents and a client certificate the
//! router presents (HTTPS with mutual TLS between them, [`crate::stack::StackOptions::core_tls`]),
//! and one certificate the NATS servers present to their clients and each leaf presents to
//! the hub. Each is written as PEM beside the run's configs; nothing outlives the run.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// The files of a run's certificates.
#[derive(Debug, Clone)]
pub struct TestPki {
    /// The certificate authority (trusted by the router and the test's client; the cores
    /// require client certificates it signed).
    pub ca_file: PathBuf,
    pub server_cert_file: PathBuf,
    pub server_key_file: PathBuf,
    pub client_cert_file: PathBuf,
    pub client_key_file: PathBuf,
    /// The NATS servers' certificate (`127.0.0.1`, for server and client authentication).
    pub nats_cert_file: PathBuf,
    pub nats_key_file: PathBuf,
}

impl TestPki {
    /// Makes the authority and the certificates and writes them into `dir` (created).
    pub fn write(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "tessera test authority");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
        let leaf = |names: &[&str], usage: &[ExtendedKeyUsagePurpose]| -> anyhow::Result<_> {
            let key = KeyPair::generate()?;
            let mut params =
                CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())?;
            params.distinguished_name.push(DnType::CommonName, names[0]);
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = usage.to_vec();
            Ok((params.signed_by(&key, &ca)?.pem(), key.serialize_pem()))
        };
        let (server_cert, server_key) =
            leaf(&["127.0.0.1", "localhost"], &[ExtendedKeyUsagePurpose::ServerAuth])?;
        let (client_cert, client_key) =
            leaf(&["tessera-router"], &[ExtendedKeyUsagePurpose::ClientAuth])?;
        let (nats_cert, nats_key) = leaf(
            &["127.0.0.1", "localhost"],
            &[ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        )?;
        let pki = TestPki {
            ca_file: dir.join("ca.pem"),
            server_cert_file: dir.join("core.pem"),
            server_key_file: dir.join("core-key.pem"),
            client_cert_file: dir.join("router.pem"),
            client_key_file: dir.join("router-key.pem"),
            nats_cert_file: dir.join("nats.pem"),
            nats_key_file: dir.join("nats-key.pem"),
        };
        let files = [
            (&pki.ca_file, ca.pem()),
            (&pki.server_cert_file, server_cert),
            (&pki.server_key_file, server_key),
            (&pki.client_cert_file, client_cert),
            (&pki.client_key_file, client_key),
            (&pki.nats_cert_file, nats_cert),
            (&pki.nats_key_file, nats_key),
        ];
        for (path, pem) in files {
            std::fs::write(path, pem).with_context(|| format!("write {}", path.display()))?;
        }
        Ok(pki)
    }

    /// The files a TLS [`tessera_local_nats::LocalNats`] needs.
    pub fn nats_tls(&self) -> tessera_local_nats::NatsTlsFiles {
        tessera_local_nats::NatsTlsFiles {
            cert_file: self.nats_cert_file.clone(),
            key_file: self.nats_key_file.clone(),
            ca_file: self.ca_file.clone(),
        }
    }

    /// The authority's certificate, for an HTTP client that must trust the cores.
    pub fn ca(&self) -> anyhow::Result<reqwest::Certificate> {
        Ok(reqwest::Certificate::from_pem(&std::fs::read(&self.ca_file)?)?)
    }

    /// The router's client certificate and key, for an HTTP client the cores accept.
    pub fn client_identity(&self) -> anyhow::Result<reqwest::Identity> {
        let mut pem = std::fs::read(&self.client_cert_file)?;
        pem.extend_from_slice(&std::fs::read(&self.client_key_file)?);
        Ok(reqwest::Identity::from_pem(&pem)?)
    }
}
