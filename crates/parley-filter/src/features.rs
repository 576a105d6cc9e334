//! Turns a message's text into hashed features, without allocating.
//!
//! Training and scoring call the same function, [`for_each_feature`], so the
//! model can never see features at training time that scoring computes
//! differently. The text is lower-cased, every digit becomes `0` (a phone
//! number's shape matters, its exact digits do not), and runs of anything
//! that is neither a letter nor a digit become one space. From that stream
//! come three families of features, each hashed into [`HASH_BUCKETS`]:
//! word unigrams, word bigrams and character 3-, 4- and 5-grams. A few
//! dense features (links, digits, capitals, currency signs, exclamation
//! marks) take the indices just past the hashed ones.

/// How many bits of the hash choose a bucket: 2^18 buckets keep collisions
/// rare for chat-sized vocabularies while the dense weight table stays 1 MiB.
pub const HASH_BITS: u32 = 18;

/// The number of hashed buckets; dense features follow at this index.
pub const HASH_BUCKETS: u32 = 1 << HASH_BITS;

/// The number of dense features after the hashed buckets.
pub const DENSE_FEATURES: u32 = 5;

/// One past the largest feature index.
pub const FEATURE_SPACE: u32 = HASH_BUCKETS + DENSE_FEATURES;

/// Only this many bytes of a message are scored (cut back to a character
/// boundary). Chat messages are far shorter; the cap bounds the cost of a
/// hostile 1 MB message to that of a 16 KiB one.
pub const MAX_SCORED_BYTES: usize = 16 * 1024;

/// The shortest and longest character n-grams.
const CHAR_GRAM_MIN: usize = 3;
const CHAR_GRAM_MAX: usize = 5;

/// The family a hashed feature belongs to. Each family is normalised on its
/// own (see [`FeatureCounts`]), so a long message does not drown its words
/// in character grams or the other way round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// Word unigrams and bigrams.
    Word,
    /// Character 3- to 5-grams.
    Char,
}

/// How many hashed features of each family a text produced. A feature's
/// value is `1 / sqrt(count of its family)`, so every family's vector has
/// roughly unit length whatever the message's length.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FeatureCounts {
    /// Word unigrams plus bigrams emitted.
    pub words: u32,
    /// Character n-grams emitted.
    pub chars: u32,
    /// The dense features, in index order from [`HASH_BUCKETS`].
    pub dense: [f32; DENSE_FEATURES as usize],
}

impl FeatureCounts {
    /// The value each emitted feature of `family` carries.
    pub fn scale(&self, family: Family) -> f32 {
        let count = match family {
            Family::Word => self.words,
            Family::Char => self.chars,
        };
        if count == 0 { 0.0 } else { 1.0 / (count as f32).sqrt() }
    }
}

/// Cuts `text` to at most [`MAX_SCORED_BYTES`], on a character boundary.
pub fn scored_part(text: &str) -> &str {
    if text.len() <= MAX_SCORED_BYTES {
        return text;
    }
    let mut end = MAX_SCORED_BYTES;
    while end > 0 && !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or("")
}

/// Calls `emit(family, bucket)` for every hashed feature of `text` (a
/// feature that occurs twice is emitted twice) and returns the counts and
/// the dense features. Deterministic, allocation-free, and linear in the
/// scored part of the text.
pub fn for_each_feature(text: &str, mut emit: impl FnMut(Family, u32)) -> FeatureCounts {
    let text = scored_part(text);
    let mut counts = FeatureCounts::default();

    // The last CHAR_GRAM_MAX characters of the normalised stream.
    let mut grams = Grams::default();
    // The hash of the word being read, and of the previous word.
    let mut word_hash = FNV_OFFSET;
    let mut in_word = false;
    let mut previous_word: Option<u64> = None;
    // Whether the last character pushed to the window was a space, so runs
    // of separators collapse into one.
    let mut last_was_space = true;

    let mut letters = 0u32;
    let mut uppercase = 0u32;
    let mut digits = 0u32;
    let mut visible = 0u32;
    let mut currency = 0u32;
    let mut exclamations = 0u32;

    // A leading space marks the start of the first word for char grams.
    grams.push(u32::from(b' '), &mut counts, &mut emit);
    for raw in text.chars() {
        if !raw.is_whitespace() {
            visible += 1;
        }
        if raw.is_alphabetic() {
            letters += 1;
            if raw.is_uppercase() {
                uppercase += 1;
            }
        }
        match raw {
            '$' | '£' | '€' | '¥' => currency += 1,
            '!' => exclamations += 1,
            _ => {}
        }
        if raw.is_numeric() {
            digits += 1;
        }
        if raw.is_alphanumeric() {
            let folded = raw.to_lowercase();
            for lower in folded {
                let c = if lower.is_numeric() {
                    u32::from(b'0')
                } else {
                    u32::from(lower)
                };
                word_hash = fnv_step(word_hash, c);
                in_word = true;
                grams.push(c, &mut counts, &mut emit);
            }
            last_was_space = false;
        } else {
            if in_word {
                end_word(word_hash, &mut previous_word, &mut counts, &mut emit);
                word_hash = FNV_OFFSET;
                in_word = false;
            }
            if !last_was_space {
                grams.push(u32::from(b' '), &mut counts, &mut emit);
                last_was_space = true;
            }
        }
    }
    if in_word {
        end_word(word_hash, &mut previous_word, &mut counts, &mut emit);
    }
    if !last_was_space {
        grams.push(u32::from(b' '), &mut counts, &mut emit);
    }

    let links = count_links(text);
    counts.dense = [
        (1.0 + links as f32).ln(),
        ratio(digits, visible),
        ratio(uppercase, letters),
        (1.0 + currency as f32).ln(),
        (1.0 + exclamations as f32).ln(),
    ];
    counts
}

/// The character window the grams are read from. Its methods, like
/// [`end_word`], take `emit` by its own type rather than as a trait object,
/// so that a caller's closure (the model's sums) is inlined into the loop
/// and its sums stay in registers: one indirect call and one round trip
/// through memory per gram were most of a character's cost.
#[derive(Default)]
struct Grams {
    window: [u32; CHAR_GRAM_MAX],
    len: usize,
}

impl Grams {
    #[inline(always)]
    fn push<E: FnMut(Family, u32)>(&mut self, c: u32, counts: &mut FeatureCounts, emit: &mut E) {
        // Shifted by value (registers), not with a memmove.
        let [_, a, b, d, e] = self.window;
        self.window = [a, b, d, e, c];
        self.len = (self.len + 1).min(CHAR_GRAM_MAX);
        for n in CHAR_GRAM_MIN..=self.len {
            let mut hash = FNV_OFFSET ^ (n as u64);
            for &gram_char in &self.window[CHAR_GRAM_MAX - n..] {
                hash = fnv_step(hash, gram_char);
            }
            emit(Family::Char, bucket(hash, SEED_CHAR));
            counts.chars += 1;
        }
    }
}

/// Emits the word that ends here, and the bigram it makes with the one
/// before.
#[inline(always)]
fn end_word<E: FnMut(Family, u32)>(
    word_hash: u64,
    previous_word: &mut Option<u64>,
    counts: &mut FeatureCounts,
    emit: &mut E,
) {
    emit(Family::Word, bucket(word_hash, SEED_UNIGRAM));
    counts.words += 1;
    if let Some(previous) = *previous_word {
        emit(Family::Word, bucket(previous.rotate_left(17) ^ word_hash, SEED_BIGRAM));
        counts.words += 1;
    }
    *previous_word = Some(word_hash);
}

/// Counts `http://`, `https://` and `www.` occurrences, case-insensitively.
fn count_links(text: &str) -> u32 {
    let bytes = text.as_bytes();
    let mut links = 0u32;
    let mut i = 0usize;
    while i < bytes.len() {
        let rest = &bytes[i..];
        if starts_with_ignore_case(rest, b"http://") || starts_with_ignore_case(rest, b"https://") {
            links += 1;
            i += 7;
        } else if starts_with_ignore_case(rest, b"www.") {
            links += 1;
            i += 4;
        } else {
            i += 1;
        }
    }
    links
}

fn starts_with_ignore_case(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.len() >= needle.len() && haystack[..needle.len()].eq_ignore_ascii_case(needle)
}

fn ratio(part: u32, whole: u32) -> f32 {
    if whole == 0 { 0.0 } else { part as f32 / whole as f32 }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Distinct seeds keep the families' buckets independent.
const SEED_UNIGRAM: u64 = 0x9e37_79b9_7f4a_7c15;
const SEED_BIGRAM: u64 = 0xc2b2_ae3d_27d4_eb4f;
const SEED_CHAR: u64 = 0x1656_67b1_9e37_79f9;

/// FNV-1a over the four little-endian bytes of `c`. A zero byte only
/// multiplies, so a character below 256 (nearly every one of a chat line)
/// takes one multiply by the prime's fourth power instead of four: the
/// same hash, a quarter of the work on the scorer's hottest line.
fn fnv_step(hash: u64, c: u32) -> u64 {
    if c <= 0xff {
        return (hash ^ u64::from(c)).wrapping_mul(FNV_PRIME_4);
    }
    let mut hash = hash;
    for byte in c.to_le_bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// `FNV_PRIME` to the fourth power, modulo 2^64.
const FNV_PRIME_4: u64 = FNV_PRIME
    .wrapping_mul(FNV_PRIME)
    .wrapping_mul(FNV_PRIME)
    .wrapping_mul(FNV_PRIME);

/// Mixes a hash with a family seed (the splitmix64 finaliser) and keeps
/// [`HASH_BITS`] bits.
fn bucket(hash: u64, seed: u64) -> u32 {
    let mut z = hash ^ seed;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z & u64::from(HASH_BUCKETS - 1)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one-multiply step is FNV-1a over the four bytes, exactly.
    #[test]
    fn the_short_step_is_the_byte_wise_hash() {
        fn reference(mut hash: u64, c: u32) -> u64 {
            for byte in c.to_le_bytes() {
                hash ^= u64::from(byte);
                hash = hash.wrapping_mul(FNV_PRIME);
            }
            hash
        }
        for start in [FNV_OFFSET, FNV_OFFSET ^ 3, 0, u64::MAX, 0x1234_5678_9abc_def0] {
            for c in (0..0x300).chain([0xffff, 0x1_0000, 0x10_ffff]) {
                assert_eq!(fnv_step(start, c), reference(start, c), "{start:x} {c:x}");
            }
        }
    }

    fn collect(text: &str) -> (Vec<(Family, u32)>, FeatureCounts) {
        let mut features = Vec::new();
        let counts = for_each_feature(text, |family, bucket| features.push((family, bucket)));
        (features, counts)
    }

    #[test]
    fn counts_match_what_is_emitted() {
        let (features, counts) = collect("Call 0906 NOW!! www.example.com");
        let words = features.iter().filter(|(f, _)| *f == Family::Word).count();
        let chars = features.iter().filter(|(f, _)| *f == Family::Char).count();
        assert_eq!(words as u32, counts.words);
        assert_eq!(chars as u32, counts.chars);
        // call, 0000, now, www, example, com: 6 unigrams and 5 bigrams.
        assert_eq!(counts.words, 11);
        assert!(features.iter().all(|(_, bucket)| *bucket < HASH_BUCKETS));
    }

    #[test]
    fn case_digits_and_separators_are_normalised() {
        assert_eq!(collect("Hello,   World 123").0, collect("hello world 999").0);
    }

    #[test]
    fn empty_and_separator_only_texts_emit_nothing_but_the_boundary() {
        let (features, counts) = collect("");
        assert!(features.is_empty());
        assert_eq!(counts.words, 0);
        assert_eq!(counts.scale(Family::Word), 0.0);
        assert_eq!(collect("   !!! ...").1.words, 0);
    }

    #[test]
    fn dense_features_see_links_digits_capitals() {
        let (_, counts) = collect("SEE http://a.b AND https://c.d £5");
        assert!((counts.dense[0] - 3f32.ln()).abs() < 1e-6);
        assert!(counts.dense[1] > 0.0);
        assert!(counts.dense[2] > 0.25);
        assert!(counts.dense[3] > 0.0);
    }

    #[test]
    fn scored_part_cuts_on_a_char_boundary() {
        let text = "é".repeat(MAX_SCORED_BYTES);
        let part = scored_part(&text);
        assert!(part.len() <= MAX_SCORED_BYTES);
        assert!(part.len() >= MAX_SCORED_BYTES - 1);
    }
}
