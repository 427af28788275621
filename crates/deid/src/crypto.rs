//! The cryptographic methods: `cryptoHash` (HMAC-SHA256, lowercase hex), `encrypt`
//! (AES-CBC with PKCS#7 padding, a random 16-byte IV prepended to the ciphertext, Base64 —
//! the original tool's format), and the reference-aware hashing that keeps `Type/id`
//! references, `urn:uuid:` URLs and conditional references resolvable.

use crate::error::DeidError;
use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// HMAC-SHA256 of `message` under `key`.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return [0; 32],
    };
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// `cryptoHash` of a value: HMAC-SHA256 as 64 lowercase hex digits (a valid FHIR `id`).
pub fn hash_hex(key: &[u8], value: &str) -> String {
    let mut s = String::with_capacity(64);
    for b in hmac_sha256(key, value.as_bytes()) {
        s.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        s.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    s
}

/// A hash formatted as a UUID (8-4-4-4-12 hex digits), for `urn:uuid:` URLs.
fn uuid_form(hex: &str) -> String {
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// A hash formatted as an OID below the UUID arc `2.25`, for `urn:oid:` URLs.
fn oid_form(hex: &str) -> String {
    let n = u128::from_str_radix(&hex[..32], 16).unwrap_or(0);
    format!("2.25.{n}")
}

/// Hash the resource-id parts of a reference-like string, leaving the rest readable:
/// `Patient/123` → `Patient/<h(123)>` (also with a base URL and `/_history/v`),
/// `#c1` → `#<h(c1)>`, `urn:uuid:X` → `urn:uuid:<uuid form of h(X)>`,
/// `Type?identifier=sys|v` → `Type?identifier=sys|<h(v)>`. Anything else is hashed whole.
/// The id hash equals [`hash_hex`] of the id, so hashed resource ids still match.
pub fn hash_reference(key: &[u8], r: &str) -> String {
    let h = |s: &str| hash_hex(key, s);
    if let Some(id) = r.strip_prefix('#') {
        return if id.is_empty() {
            r.to_string()
        } else {
            format!("#{}", h(id))
        };
    }
    if let Some(u) = r.strip_prefix("urn:uuid:") {
        return format!("urn:uuid:{}", uuid_form(&h(u)));
    }
    if let Some(o) = r.strip_prefix("urn:oid:") {
        return format!("urn:oid:{}", oid_form(&h(o)));
    }
    if let Some((base, query)) = r.split_once('?') {
        let params: Vec<String> = query
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((name, value)) => {
                    let value = match value.rsplit_once('|') {
                        Some((sys, v)) if !v.is_empty() => format!("{sys}|{}", h(v)),
                        Some(_) => value.to_string(),
                        None if value.is_empty() => String::new(),
                        None => h(value),
                    };
                    format!("{name}={value}")
                }
                None => p.to_string(),
            })
            .collect();
        return format!("{base}?{}", params.join("&"));
    }
    let segs: Vec<&str> = r.split('/').collect();
    // The last `Type/id` pair (possibly followed by `_history/vid`).
    let mut at = None;
    for i in (0..segs.len().saturating_sub(1)).rev() {
        if salus_fhir::defs::is_resource_type(segs[i])
            && !segs[i + 1].is_empty()
            && segs[i + 1] != "_history"
        {
            at = Some(i + 1);
            break;
        }
    }
    match at {
        Some(i) => {
            let mut out: Vec<String> = segs.iter().map(|s| s.to_string()).collect();
            out[i] = h(segs[i]);
            out.join("/")
        }
        None => h(r),
    }
}

fn bad_key(len: usize) -> DeidError {
    DeidError::Decrypt(format!(
        "the key must be 16, 24 or 32 bytes, not {len} bytes"
    ))
}

/// AES-CBC encrypt with a random IV; returns Base64 of `IV ‖ ciphertext`.
pub fn encrypt(key: &[u8], plaintext: &str) -> Result<String, DeidError> {
    let mut iv = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut iv);
    encrypt_with_iv(key, &iv, plaintext)
}

fn encrypt_with_iv(key: &[u8], iv: &[u8; 16], plaintext: &str) -> Result<String, DeidError> {
    let data = plaintext.as_bytes();
    let ct = match key.len() {
        16 => cbc::Encryptor::<aes::Aes128>::new_from_slices(key, iv)
            .map_err(|_| bad_key(key.len()))?
            .encrypt_padded_vec_mut::<Pkcs7>(data),
        24 => cbc::Encryptor::<aes::Aes192>::new_from_slices(key, iv)
            .map_err(|_| bad_key(key.len()))?
            .encrypt_padded_vec_mut::<Pkcs7>(data),
        32 => cbc::Encryptor::<aes::Aes256>::new_from_slices(key, iv)
            .map_err(|_| bad_key(key.len()))?
            .encrypt_padded_vec_mut::<Pkcs7>(data),
        n => return Err(bad_key(n)),
    };
    let mut out = Vec::with_capacity(16 + ct.len());
    out.extend_from_slice(iv);
    out.extend_from_slice(&ct);
    Ok(base64::engine::general_purpose::STANDARD.encode(out))
}

/// Reverse [`encrypt`]: Base64 of `IV ‖ ciphertext` back to the text.
pub fn decrypt(key: &[u8], encoded: &str) -> Result<String, DeidError> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|e| DeidError::Decrypt(format!("not Base64: {e}")))?;
    if raw.len() < 32 || raw.len() % 16 != 0 {
        return Err(DeidError::Decrypt(
            "too short or not whole AES blocks".into(),
        ));
    }
    let (iv, ct) = raw.split_at(16);
    let short = |_| DeidError::Decrypt("wrong key or corrupted data".into());
    let pt = match key.len() {
        16 => cbc::Decryptor::<aes::Aes128>::new_from_slices(key, iv)
            .map_err(|_| bad_key(key.len()))?
            .decrypt_padded_vec_mut::<Pkcs7>(ct)
            .map_err(short)?,
        24 => cbc::Decryptor::<aes::Aes192>::new_from_slices(key, iv)
            .map_err(|_| bad_key(key.len()))?
            .decrypt_padded_vec_mut::<Pkcs7>(ct)
            .map_err(short)?,
        32 => cbc::Decryptor::<aes::Aes256>::new_from_slices(key, iv)
            .map_err(|_| bad_key(key.len()))?
            .decrypt_padded_vec_mut::<Pkcs7>(ct)
            .map_err(short)?,
        n => return Err(bad_key(n)),
    };
    String::from_utf8(pt).map_err(|_| DeidError::Decrypt("plaintext is not UTF-8".into()))
}

/// The date-shift offset for a scope value: ±1 to ±50 days, never 0 (a zero shift would
/// publish the true dates), from HMAC-SHA256(key, scope).
pub(crate) fn date_offset(key: &[u8], scope: &str) -> i64 {
    let mac = hmac_sha256(key, scope.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&mac[..8]);
    let n = (u64::from_be_bytes(b) % 100) as i64; // 0..=99
    if n < 50 {
        n - 50 // -50..=-1
    } else {
        n - 49 // 1..=50
    }
}

/// A random 32-byte key (for configurations that leave a key empty).
pub(crate) fn random_key() -> Vec<u8> {
    let mut k = vec![0u8; 32];
    rand::thread_rng().fill_bytes(&mut k);
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_known_answer() {
        // RFC 4231 test case 2.
        let mac = hash_hex(b"Jefe", "what do ya want for nothing?");
        assert_eq!(
            mac,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn references_keep_their_shape() {
        let k = b"k";
        let h = |s: &str| hash_hex(k, s);
        assert_eq!(
            hash_reference(k, "Patient/123"),
            format!("Patient/{}", h("123"))
        );
        assert_eq!(
            hash_reference(k, "http://x.org/fhir/Patient/123/_history/2"),
            format!("http://x.org/fhir/Patient/{}/_history/2", h("123"))
        );
        assert_eq!(hash_reference(k, "#c1"), format!("#{}", h("c1")));
        let u = hash_reference(k, "urn:uuid:abc");
        assert_eq!(u.len(), "urn:uuid:".len() + 36);
        assert!(u.starts_with(&format!("urn:uuid:{}-", &h("abc")[..8])));
        assert!(hash_reference(k, "urn:oid:1.2.3").starts_with("urn:oid:2.25."));
        assert_eq!(
            hash_reference(k, "Practitioner?identifier=http://npi|99&active=true"),
            format!(
                "Practitioner?identifier=http://npi|{}&active={}",
                h("99"),
                h("true")
            )
        );
        assert_eq!(hash_reference(k, "not a reference"), h("not a reference"));
        assert_eq!(hash_reference(k, "#"), "#");
    }

    #[test]
    fn encrypt_round_trip_and_format() {
        for key in [
            "0123456789abcdef",
            "0123456789abcdef01234567",
            "0123456789abcdef0123456789abcdef",
        ] {
            let c = encrypt(key.as_bytes(), "Hello, world").unwrap();
            let raw = base64::engine::general_purpose::STANDARD
                .decode(&c)
                .unwrap();
            assert_eq!(raw.len(), 32, "IV + one block");
            assert_eq!(decrypt(key.as_bytes(), &c).unwrap(), "Hello, world");
            // A random IV: encrypting twice differs.
            assert_ne!(c, encrypt(key.as_bytes(), "Hello, world").unwrap());
        }
        assert!(encrypt(b"short", "x").is_err());
        assert!(decrypt(b"0123456789abcdef", "!!").is_err());
    }

    #[test]
    fn aes128_cbc_known_answer() {
        // `echo -n Hello | openssl enc -aes-128-cbc -K <hex of the key> -iv 000102...0f`.
        let mut iv = [0u8; 16];
        for (i, b) in iv.iter_mut().enumerate() {
            *b = i as u8;
        }
        let c = encrypt_with_iv(b"0123456789abcdef", &iv, "Hello").unwrap();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&c)
            .unwrap();
        let expected = base64::engine::general_purpose::STANDARD
            .decode("/Ywwa8+KtLLdlaXqTFIZOg==")
            .unwrap();
        assert_eq!(&raw[..16], &iv);
        assert_eq!(&raw[16..], &expected[..]);
        assert_eq!(decrypt(b"0123456789abcdef", &c).unwrap(), "Hello");
    }

    #[test]
    fn offsets_are_in_range_and_never_zero() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..2000 {
            let o = date_offset(b"key", &format!("r{i}"));
            assert!((-50..=50).contains(&o) && o != 0);
            seen.insert(o);
        }
        assert_eq!(seen.len(), 100);
        assert_eq!(date_offset(b"key", "x"), date_offset(b"key", "x"));
    }
}
