//! Raw AEAD throughput of this machine, to set the store's figures against.

use crate::packet::{Cipher, KeySecret, Place, DEFAULT_PACKET_BYTES, TAG_BYTES};
use std::time::Instant;

/// Seal and open throughput, in MB/s (10^6 bytes of plaintext a second), over `bytes` of
/// 16 KiB packets sealed the way the store seals them: each at its own place, so under its
/// own derived key, the two AEADs taking turns as the master's random choice would.
/// Measured on a blocking thread, one core.
pub async fn aead_throughput(bytes: usize) -> (f64, f64) {
    tokio::task::spawn_blocking(move || measure(&Cipher::ALL, bytes))
        .await
        .unwrap_or((0.0, 0.0))
}

/// The same for one AEAD, on the calling thread.
pub fn aead_throughput_of(cipher: Cipher, bytes: usize) -> (f64, f64) {
    measure(&[cipher], bytes)
}

fn measure(ciphers: &[Cipher], bytes: usize) -> (f64, f64) {
    let packet = DEFAULT_PACKET_BYTES as usize;
    let count = bytes.div_ceil(packet).max(1);
    let plaintext: Vec<u8> = (0..packet).map(|i| (i * 31 % 251) as u8).collect();
    let secret = KeySecret::random(1);
    let place = |p: usize| Place {
        file: 1,
        packet: p as u32,
        sub: 0,
        key: 1,
    };
    let cipher = |p: usize| ciphers[p % ciphers.len()];
    // What is sealed is kept for opening; the timed pass drops each output at once, so that
    // it measures the AEAD rather than the faulting-in of fresh memory.
    let sealed: Vec<Vec<u8>> = (0..count)
        .filter_map(|p| place(p).seal(cipher(p), &secret, &plaintext).ok())
        .collect();
    let started = Instant::now();
    let mut sealed_bytes = 0;
    for p in 0..count {
        if let Ok(s) = place(p).seal(cipher(p), &secret, &plaintext) {
            sealed_bytes += std::hint::black_box(s).len();
        }
    }
    let seal_secs = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let opened = sealed
        .into_iter()
        .enumerate()
        .filter_map(|(p, s)| place(p).open(cipher(p), &secret, s).ok())
        .map(|o| o.len())
        .sum::<usize>();
    let open_secs = started.elapsed().as_secs_f64();
    let total = (count * packet) as f64 / 1e6;
    // Everything sealed must have opened, or the figures measure nothing.
    if opened != count * packet || sealed_bytes != count * (packet + TAG_BYTES) {
        return (0.0, 0.0);
    }
    (total / seal_secs.max(1e-9), total / open_secs.max(1e-9))
}
