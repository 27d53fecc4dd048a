//! The digest of a set of session ids that heartbeats carry (`registry.proto`): the XOR of
//! the first 8 bytes of each id's SHA-1, so adding or removing an id is one XOR and the
//! registry's Lua scripts (`redis.sha1hex`) compute the same value as the gateway.

use sha1::{Digest, Sha1};

/// The digest of one session id.
pub fn of_id(session_id: &str) -> u64 {
    let hash = Sha1::digest(session_id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash[..8]);
    u64::from_be_bytes(first)
}

/// The digest of a set of ids (each id once).
pub fn of_ids<'a>(session_ids: impl IntoIterator<Item = &'a str>) -> u64 {
    session_ids
        .into_iter()
        .fold(0, |digest, id| digest ^ of_id(id))
}

/// Joins the two signed 32-bit halves the registry's Lua keeps (Lua's `bit` library works
/// on signed 32-bit integers) into a digest.
pub fn from_halves(high: i64, low: i64) -> u64 {
    (u64::from(high as u32) << 32) | u64::from(low as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xor_is_order_free_and_self_inverse() {
        let ab = of_ids(["a", "b"]);
        assert_eq!(ab, of_ids(["b", "a"]));
        assert_eq!(ab ^ of_id("b"), of_id("a"));
        assert_eq!(of_ids([]), 0);
        // SHA-1("a") = 86f7e437faa5a7fce15d1ddcb9eaeaea377667b8
        assert_eq!(of_id("a"), 0x86f7_e437_faa5_a7fc);
        assert_eq!(
            from_halves(-2_030_574_537, -89_806_852),
            0x86f7_e437_faa5_a7fc
        );
    }
}
