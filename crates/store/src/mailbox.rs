//! Mailbox messages are sealed to their recipient's public key with HPKE (RFC 9180, base
//! mode: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305) before they are split
//! into packets. The masters hold the packets' keys, so the sources cannot read a message;
//! the seal means the masters cannot either, and only the recipient's private key opens it.

use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem, OpModeR, OpModeS, Serializable};
use thiserror::Error;

type KemT = X25519HkdfSha256;
const INFO: &[u8] = b"mcloud mailbox v1";
/// Bytes of the encapsulated key that starts every sealed message.
const ENCAPPED_BYTES: usize = 32;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum MailboxError {
    #[error("mailbox key: {0}")]
    BadKey(String),
    #[error("the message does not open with this key: not sealed to it, or changed")]
    Open,
    #[error("sealing the message failed")]
    Seal,
}

impl MailboxError {
    pub fn code(&self) -> &'static str {
        match self {
            MailboxError::BadKey(_) => "bad_mailbox_key",
            MailboxError::Open => "message_corrupt",
            MailboxError::Seal => "seal_failed",
        }
    }
}

/// A user's mailbox key pair.
pub struct MailboxKeys {
    private: <KemT as Kem>::PrivateKey,
    public: <KemT as Kem>::PublicKey,
}

impl MailboxKeys {
    pub fn generate() -> MailboxKeys {
        let (private, public) = KemT::gen_keypair(&mut rand::rngs::OsRng);
        MailboxKeys { private, public }
    }

    /// The private key as 64 hex digits (what `mcloud mailbox keygen` writes to a file).
    pub fn private_hex(&self) -> String {
        hex::encode(self.private.to_bytes())
    }

    pub fn from_private_hex(text: &str) -> Result<MailboxKeys, MailboxError> {
        let bytes = hex::decode(text.trim()).map_err(|e| MailboxError::BadKey(e.to_string()))?;
        let private = <KemT as Kem>::PrivateKey::from_bytes(&bytes)
            .map_err(|e| MailboxError::BadKey(e.to_string()))?;
        let public = KemT::sk_to_pk(&private);
        Ok(MailboxKeys { private, public })
    }

    pub fn public(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(&self.public.to_bytes());
        out
    }

    /// Opens a message sealed to this key.
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, MailboxError> {
        if sealed.len() < ENCAPPED_BYTES {
            return Err(MailboxError::Open);
        }
        let (encapped, ciphertext) = sealed.split_at(ENCAPPED_BYTES);
        let encapped =
            <KemT as Kem>::EncappedKey::from_bytes(encapped).map_err(|_| MailboxError::Open)?;
        hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, KemT>(
            &OpModeR::Base,
            &self.private,
            &encapped,
            INFO,
            ciphertext,
            &self.public(),
        )
        .map_err(|_| MailboxError::Open)
    }
}

/// Seals `plaintext` to the recipient's public key: the encapsulated key, then the
/// ciphertext.
pub fn seal(recipient: &[u8; 32], plaintext: &[u8]) -> Result<Vec<u8>, MailboxError> {
    let public = <KemT as Kem>::PublicKey::from_bytes(recipient)
        .map_err(|e| MailboxError::BadKey(e.to_string()))?;
    let (encapped, ciphertext) = hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, KemT, _>(
        &OpModeS::Base,
        &public,
        INFO,
        plaintext,
        recipient,
        &mut rand::rngs::OsRng,
    )
    .map_err(|_| MailboxError::Seal)?;
    let mut out = encapped.to_bytes().to_vec();
    out.extend_from_slice(&ciphertext);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_recipient_opens_a_message() {
        let bob = MailboxKeys::generate();
        let eve = MailboxKeys::generate();
        let sealed = seal(&bob.public(), b"plug 7 of house 3 is an outlier").unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"outlie"));
        assert_eq!(
            bob.open(&sealed).unwrap(),
            b"plug 7 of house 3 is an outlier"
        );
        assert_eq!(eve.open(&sealed), Err(MailboxError::Open));
        let mut changed = sealed.clone();
        let last = changed.len() - 1;
        changed[last] ^= 1;
        assert_eq!(bob.open(&changed), Err(MailboxError::Open));
        assert_eq!(bob.open(&sealed[..10]), Err(MailboxError::Open));
        // A key written out and read back is the same key.
        let again = MailboxKeys::from_private_hex(&bob.private_hex()).unwrap();
        assert_eq!(again.public(), bob.public());
        assert!(again.open(&sealed).is_ok());
        assert!(MailboxKeys::from_private_hex("zz").is_err());
    }
}
