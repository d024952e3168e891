//! Certificates made on the fly with rcgen: a CA, and leaves it signs.

use std::path::Path;

pub type Ca = rcgen::CertifiedIssuer<'static, rcgen::KeyPair>;

pub fn make_ca(name: &str) -> Ca {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let key = rcgen::KeyPair::generate().expect("ca key");
    rcgen::CertifiedIssuer::self_signed(params, key).expect("self-signed ca")
}

/// A certificate signed by `ca`: `(certificate PEM, private key PEM)`.
pub fn make_leaf(
    ca: &Ca,
    common_name: &str,
    dns: &[&str],
    ips: &[&str],
    client: bool,
) -> (String, String) {
    let mut params =
        rcgen::CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("leaf params");
    for ip in ips {
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress(ip.parse().expect("ip")));
    }
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![if client {
        rcgen::ExtendedKeyUsagePurpose::ClientAuth
    } else {
        rcgen::ExtendedKeyUsagePurpose::ServerAuth
    }];
    let key = rcgen::KeyPair::generate().expect("leaf key");
    let cert = params.signed_by(&key, ca).expect("sign leaf");
    (cert.pem(), key.serialize_pem())
}

pub fn write_file(path: &Path, contents: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).expect("write file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn path_str(p: &Path) -> String {
    p.to_str().expect("utf-8 path").to_owned()
}

/// Writes `contents` to `dir/name` with `mode`; returns the path.
pub fn write_in(dir: &Path, name: &str, contents: &str, mode: u32) -> String {
    let path = dir.join(name);
    write_file(&path, contents, mode);
    path_str(&path)
}
