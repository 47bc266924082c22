//! Packets: what a source stores, and how each is named, keyed and sealed.
//!
//! A packet record is eight bytes, as in the storage design: packet id (4 B), sub-packet id
//! (1 B), source id (1 B), encryption id (1 B) and key id (1 B). Where this differs from a
//! table of one stored key per packet: the key id names one of the file's *key secrets* (the
//! master draws a new one for every write and every refresh), and each packet's own key is
//! derived from that secret, the file and the packet's place with HKDF-SHA256. So every packet
//! still has its own key, a refresh still puts rewritten packets under keys the master chose
//! anew, and the metadata holds 32 bytes per write instead of 32 per packet.
//!
//! A blob's name is an HMAC of its place under the same secret: it looks random to a source,
//! differs between the replicas of one packet, and is not stored anywhere (whoever holds the
//! secret can name the blob; a source cannot link two of them).
//!
//! Sealing binds the ciphertext to its place (file, packet, sub-packet, key id) as associated
//! data, so a source that swaps or replays blobs is caught when the packet is opened. Each key
//! seals exactly one plaintext, so the nonce can be fixed (zero) without ever repeating under
//! a key.

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::{hkdf, hmac};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Default packet size: 16 KiB of plaintext.
pub const DEFAULT_PACKET_BYTES: u32 = 16 * 1024;
/// Smallest and largest packet sizes a file may use.
pub const MIN_PACKET_BYTES: u32 = 1024;
pub const MAX_PACKET_BYTES: u32 = 4 * 1024 * 1024;
/// Bytes an AEAD adds to each sealed packet (its tag).
pub const TAG_BYTES: usize = 16;
/// Bytes of a key secret.
pub const SECRET_BYTES: usize = 32;

/// The AEAD a packet is sealed with; the master chooses it per packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum Cipher {
    Aes256Gcm = 1,
    ChaCha20Poly1305 = 2,
}

impl Cipher {
    pub const ALL: [Cipher; 2] = [Cipher::Aes256Gcm, Cipher::ChaCha20Poly1305];

    pub fn id(self) -> u8 {
        self as u8
    }

    pub fn from_id(id: u8) -> Result<Cipher, PacketError> {
        match id {
            1 => Ok(Cipher::Aes256Gcm),
            2 => Ok(Cipher::ChaCha20Poly1305),
            other => Err(PacketError::UnknownCipher(other)),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Cipher::Aes256Gcm => "AES-256-GCM",
            Cipher::ChaCha20Poly1305 => "ChaCha20-Poly1305",
        }
    }

    fn algorithm(self) -> &'static aead::Algorithm {
        match self {
            Cipher::Aes256Gcm => &aead::AES_256_GCM,
            Cipher::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }
}

/// Where one copy of one (sub-)packet lives and how it is sealed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PacketRecord {
    pub packet: u32,
    pub sub: u8,
    pub source: u8,
    pub cipher: u8,
    pub key: u8,
}

impl PacketRecord {
    pub fn to_bytes(self) -> [u8; 8] {
        let p = self.packet.to_be_bytes();
        [
            p[0],
            p[1],
            p[2],
            p[3],
            self.sub,
            self.source,
            self.cipher,
            self.key,
        ]
    }

    pub fn from_bytes(b: [u8; 8]) -> PacketRecord {
        PacketRecord {
            packet: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            sub: b[4],
            source: b[5],
            cipher: b[6],
            key: b[7],
        }
    }

    /// This copy's place, which its key, name and associated data are derived from.
    pub fn place(&self, file: u64) -> Place {
        Place {
            file,
            packet: self.packet,
            sub: self.sub,
            key: self.key,
        }
    }
}

/// One of a file's key secrets, under its key id.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySecret {
    pub id: u8,
    pub secret: [u8; SECRET_BYTES],
}

impl std::fmt::Debug for KeySecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeySecret({}, <secret>)", self.id)
    }
}

impl KeySecret {
    /// A fresh secret from the system's random source.
    pub fn random(id: u8) -> KeySecret {
        use rand::RngCore;
        let mut secret = [0u8; SECRET_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        KeySecret { id, secret }
    }
}

/// A (sub-)packet's place in a file version, under a key id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Place {
    /// The file version's id (random, drawn by the master).
    pub file: u64,
    pub packet: u32,
    pub sub: u8,
    pub key: u8,
}

impl Place {
    fn bytes(&self) -> [u8; 14] {
        let mut b = [0u8; 14];
        b[..8].copy_from_slice(&self.file.to_be_bytes());
        b[8..12].copy_from_slice(&self.packet.to_be_bytes());
        b[12] = self.sub;
        b[13] = self.key;
        b
    }

    /// The packet's own key, derived from the key secret and the place.
    fn key(&self, secret: &KeySecret) -> [u8; 32] {
        struct Len32;
        impl hkdf::KeyType for Len32 {
            fn len(&self) -> usize {
                32
            }
        }
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"mcloud packet key v1");
        let prk = salt.extract(&secret.secret);
        let place = self.bytes();
        let info = [place.as_slice()];
        let mut key = [0u8; 32];
        // Expanding 32 bytes with SHA-256 cannot fail (the limit is 255 × 32 bytes).
        if let Ok(okm) = prk.expand(&info, Len32) {
            let _ = okm.fill(&mut key);
        }
        key
    }

    /// The name of this place's copy on `source`: 32 hex digits that look random to anyone
    /// without the secret.
    pub fn blob_name(&self, secret: &KeySecret, source: u8) -> String {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &secret.secret);
        let mut msg = b"mcloud blob name v1".to_vec();
        msg.extend_from_slice(&self.bytes());
        msg.push(source);
        let tag = hmac::sign(&key, &msg);
        hex::encode(&tag.as_ref()[..16])
    }

    /// Seals `plaintext` for this place.
    pub fn seal(
        &self,
        cipher: Cipher,
        secret: &KeySecret,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, PacketError> {
        self.check_key(secret)?;
        let key = self.aead_key(cipher, secret)?;
        let mut out = Vec::with_capacity(plaintext.len() + TAG_BYTES);
        out.extend_from_slice(plaintext);
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key([0u8; 12]),
            Aad::from(self.bytes()),
            &mut out,
        )
        .map_err(|_| PacketError::Seal)?;
        Ok(out)
    }

    /// Opens a sealed blob of this place; a blob from another place, or changed at all, is
    /// refused.
    pub fn open(
        &self,
        cipher: Cipher,
        secret: &KeySecret,
        mut sealed: Vec<u8>,
    ) -> Result<Vec<u8>, PacketError> {
        self.check_key(secret)?;
        let key = self.aead_key(cipher, secret)?;
        let len = key
            .open_in_place(
                Nonce::assume_unique_for_key([0u8; 12]),
                Aad::from(self.bytes()),
                &mut sealed,
            )
            .map_err(|_| PacketError::Open {
                packet: self.packet,
                sub: self.sub,
            })?
            .len();
        sealed.truncate(len);
        Ok(sealed)
    }

    fn check_key(&self, secret: &KeySecret) -> Result<(), PacketError> {
        if secret.id != self.key {
            return Err(PacketError::WrongKey {
                wanted: self.key,
                given: secret.id,
            });
        }
        Ok(())
    }

    fn aead_key(&self, cipher: Cipher, secret: &KeySecret) -> Result<LessSafeKey, PacketError> {
        let unbound = UnboundKey::new(cipher.algorithm(), &self.key(secret))
            .map_err(|_| PacketError::Seal)?;
        Ok(LessSafeKey::new(unbound))
    }
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PacketError {
    #[error("unknown encryption id {0}")]
    UnknownCipher(u8),
    #[error("packet {packet}.{sub} does not open: changed, or not the blob of this place")]
    Open { packet: u32, sub: u8 },
    #[error("the packet is under key {wanted}, the secret given is key {given}")]
    WrongKey { wanted: u8, given: u8 },
    #[error("sealing failed")]
    Seal,
}

impl PacketError {
    /// A stable code clients match.
    pub fn code(&self) -> &'static str {
        match self {
            PacketError::UnknownCipher(_) => "unknown_cipher",
            PacketError::Open { .. } => "packet_corrupt",
            PacketError::WrongKey { .. } => "wrong_key",
            PacketError::Seal => "seal_failed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place() -> Place {
        Place {
            file: 7,
            packet: 3,
            sub: 0,
            key: 1,
        }
    }

    #[test]
    fn a_record_is_eight_bytes_and_round_trips() {
        let r = PacketRecord {
            packet: 0x0102_0304,
            sub: 5,
            source: 6,
            cipher: 2,
            key: 9,
        };
        assert_eq!(r.to_bytes(), [1, 2, 3, 4, 5, 6, 2, 9]);
        assert_eq!(PacketRecord::from_bytes(r.to_bytes()), r);
    }

    #[test]
    fn each_cipher_opens_what_it_sealed_and_nothing_else() {
        let secret = KeySecret::random(1);
        for cipher in Cipher::ALL {
            let sealed = place().seal(cipher, &secret, b"reading history").unwrap();
            assert_eq!(sealed.len(), 15 + TAG_BYTES);
            assert!(!sealed.windows(7).any(|w| w == b"reading"));
            assert_eq!(
                place().open(cipher, &secret, sealed.clone()).unwrap(),
                b"reading history"
            );
            // Another place (a swapped blob), another secret, a flipped bit: refused.
            let other = Place {
                packet: 4,
                ..place()
            };
            assert!(other.open(cipher, &secret, sealed.clone()).is_err());
            assert!(place()
                .open(cipher, &KeySecret::random(1), sealed.clone())
                .is_err());
            let mut flipped = sealed.clone();
            flipped[0] ^= 1;
            assert_eq!(
                place().open(cipher, &secret, flipped),
                Err(PacketError::Open { packet: 3, sub: 0 })
            );
        }
        assert!(matches!(
            place().seal(Cipher::Aes256Gcm, &KeySecret::random(2), b"x"),
            Err(PacketError::WrongKey {
                wanted: 1,
                given: 2
            })
        ));
    }

    #[test]
    fn names_differ_per_place_source_and_secret() {
        let secret = KeySecret::random(1);
        let a = place().blob_name(&secret, 0);
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(a, place().blob_name(&secret, 0));
        assert_ne!(a, place().blob_name(&secret, 1));
        assert_ne!(a, place().blob_name(&KeySecret::random(1), 0));
        let next = Place {
            packet: 4,
            ..place()
        };
        assert_ne!(a, next.blob_name(&secret, 0));
    }
}
