//! Random identifiers (file names, idempotency keys), shared by the server and the client.

/// Random bytes as lowercase hex, from the thread-local CSPRNG.
pub(crate) fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut buffer);
    buffer.iter().map(|b| format!("{b:02x}")).collect()
}
