//! A development PKI (`warden certs init`): a CA, a RADIUS/EAP server
//! certificate and device certificates, ECDSA P-256, from rcgen. For
//! trying warden and for the tests; production certificates come from the
//! MDM's or the organisation's CA.

// A shell: it reads the clock and randomness for the cores it drives.
#![allow(clippy::disallowed_methods)]

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use rustls::pki_types::pem::PemObject;
use time::{Duration, OffsetDateTime};

/// A certificate and its key, DER and PEM.
pub struct Issued {
    /// The serial number (what a CRL names).
    pub serial: u64,
    pub cert_der: Vec<u8>,
    pub cert_pem: String,
    pub key_der: Vec<u8>,
    pub key_pem: String,
}

pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_der: Vec<u8>,
    key_pem: String,
}

impl Ca {
    /// A new self-signed CA named `name`, valid for ten years.
    pub fn new(name: &str) -> Result<Self, rcgen::Error> {
        let key = KeyPair::generate()?;
        let key_pem = key.serialize_pem();
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(3650);
        let cert = params.self_signed(&key)?;
        Ok(Self { cert_pem: cert.pem(), cert_der: cert.der().to_vec(), issuer: Issuer::new(params, key), key_pem })
    }

    /// A CA from its certificate and key (PEM), e.g. one `warden certs init` wrote.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, rcgen::Error> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        let der = rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|_| rcgen::Error::CouldNotParseCertificate)?;
        Ok(Self { issuer, cert_pem: cert_pem.to_string(), cert_der: der.to_vec(), key_pem: key_pem.to_string() })
    }

    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    pub fn cert_der(&self) -> Vec<u8> {
        self.cert_der.clone()
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// A server certificate for `dns_name` (serverAuth), valid two years.
    pub fn server(&self, dns_name: &str) -> Result<Issued, rcgen::Error> {
        let now = OffsetDateTime::now_utc();
        self.issue(
            dns_name,
            vec![SanType::DnsName(dns_name.try_into()?)],
            ExtendedKeyUsagePurpose::ServerAuth,
            now - Duration::days(1),
            now + Duration::days(730),
        )
    }

    /// A device certificate (clientAuth) with CN = SAN DNS = `device_id`,
    /// valid between `not_before` and `not_after`.
    pub fn device(
        &self,
        device_id: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Issued, rcgen::Error> {
        let san =
            vec![SanType::DnsName(device_id.try_into()?), SanType::URI(format!("urn:device:{device_id}").try_into()?)];
        self.issue(device_id, san, ExtendedKeyUsagePurpose::ClientAuth, not_before, not_after)
    }

    /// A device certificate valid from yesterday for a year.
    pub fn device_now(&self, device_id: &str) -> Result<Issued, rcgen::Error> {
        let now = OffsetDateTime::now_utc();
        self.device(device_id, now - Duration::days(1), now + Duration::days(365))
    }

    fn issue(
        &self,
        cn: &str,
        san: Vec<SanType>,
        usage: ExtendedKeyUsagePurpose,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Issued, rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = san;
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = not_before;
        params.not_after = not_after;
        // Positive and non-zero, as RFC 5280 wants; random so two dev PKIs differ.
        let serial = fastrand::u64(1..i64::MAX as u64);
        params.serial_number = Some(serial.into());
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            serial,
            cert_der: cert.der().to_vec(),
            cert_pem: cert.pem(),
            key_der: key.serialize_der(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A CRL (DER) revoking `serials`, valid for a week.
    pub fn crl(&self, serials: &[u64]) -> Result<Vec<u8>, rcgen::Error> {
        let now = OffsetDateTime::now_utc();
        let params = rcgen::CertificateRevocationListParams {
            this_update: now - Duration::hours(1),
            next_update: now + Duration::days(7),
            crl_number: 1u64.into(),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| rcgen::RevokedCertParams {
                    serial_number: (*s).into(),
                    revocation_time: now - Duration::hours(1),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.der().to_vec())
    }
}
