//! Who made a request: the common name of the client's TLS certificate
//! (checked against the cluster CA before any RPC ran), or its address on
//! a cluster without TLS. poold logs it with every change.

use tonic::Request;

/// `CN=NAME` of the client's certificate, else `ADDR (no TLS)`.
pub fn who<T>(req: &Request<T>) -> String {
    if let Some(certs) = req.peer_certs() {
        if let Some(der) = certs.first() {
            return match x509_parser::parse_x509_certificate(der.as_ref()) {
                Ok((_, c)) => match c
                    .subject()
                    .iter_common_name()
                    .next()
                    .and_then(|cn| cn.as_str().ok())
                {
                    Some(cn) => format!("CN={cn}"),
                    None => format!("certificate without CN ({})", c.subject()),
                },
                Err(_) => "an unparsable certificate".into(),
            };
        }
    }
    match req.remote_addr() {
        Some(a) => format!("{a} (no TLS)"),
        None => "unknown (no TLS)".into(),
    }
}
