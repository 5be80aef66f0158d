//! In-memory TLS 1.3 transfer with rustls (ring's ciphers): a server writes N MB (argument 1,
//! default 200) and a client reads them. Prints the client's receive rate (record handling and
//! decryption: what a download runs through) and the rate of both sides together. Reads
//! `ca.pem`, `cert.pem` and `key.pem` from the current folder (bench/tls/run.sh makes them).
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Instant;


fn main() {
    let mb: usize = std::env::args().nth(1).map(|s| s.parse().unwrap()).unwrap_or(200);
    let certs: Vec<CertificateDer> = CertificateDer::pem_file_iter("cert.pem").unwrap().map(|c| c.unwrap()).collect();
    let key = PrivateKeyDer::from_pem_file("key.pem").unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server_cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions().unwrap()
        .with_no_client_auth().with_single_cert(certs.clone(), key).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file("ca.pem").unwrap()).unwrap();
    let client_cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions().unwrap()
        .with_root_certificates(roots).with_no_client_auth();
    let mut server = rustls::ServerConnection::new(Arc::new(server_cfg)).unwrap();
    let mut client = rustls::ClientConnection::new(Arc::new(client_cfg), ServerName::try_from("localhost").unwrap()).unwrap();
    server.set_buffer_limit(None);
    client.set_buffer_limit(None);
    let mut wire: Vec<u8> = Vec::new();
    // Handshake.
    while client.is_handshaking() || server.is_handshaking() {
        wire.clear(); client.write_tls(&mut wire).unwrap(); server.read_tls(&mut &wire[..]).unwrap(); server.process_new_packets().unwrap();
        wire.clear(); server.write_tls(&mut wire).unwrap(); client.read_tls(&mut &wire[..]).unwrap(); client.process_new_packets().unwrap();
    }
    let chunk = vec![7u8; 1 << 20];
    let mut got = vec![0u8; 1 << 16];
    let (mut recv_s, mut total) = (0f64, 0usize);
    let start = Instant::now();
    for _ in 0..mb {
        server.writer().write_all(&chunk).unwrap();
        wire.clear();
        while server.wants_write() { server.write_tls(&mut wire).unwrap(); }
        let t = Instant::now();
        let mut rd = &wire[..];
        while !rd.is_empty() {
            client.read_tls(&mut rd).unwrap();
            client.process_new_packets().unwrap();
            loop {
                match client.reader().read(&mut got) { Ok(0) => break, Ok(n) => total += n, Err(_) => break }
            }
        }
        recv_s += t.elapsed().as_secs_f64();
    }
    assert_eq!(total, mb << 20);
    println!("{} MB: receive {:.0} MB/s, send+receive {:.0} MB/s", mb, mb as f64 / recv_s, mb as f64 / start.elapsed().as_secs_f64());
}
