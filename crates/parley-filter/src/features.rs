//! Turns a message's text into hashed features, without allocating.
//!
//! Training and scoring call the same function, [`for_each_feature`], so the
//! model can never see features at training time that scoring computes
//! differently. The text is lower-cased, every digit becomes `0` (a phone
//! number's shape matters, its exact digits do not), and runs of anything
//! that is neither a letter nor a digit become one space. From that stream
//! come word unigrams and word bigrams, and, where the model asks for them
//! ([`FeatureSet::char_grams`]), character 4-grams, each hashed into
//! [`HASH_BUCKETS`]. A few dense features (links, digits, capitals,
//! currency signs, exclamation marks) take the indices just past the
//! hashed ones.
//!
//! The cost is what the send path pays for every message, so the loop reads
//! bytes, not `char`s: an ASCII byte's class and folded form come from one
//! table, and only other characters take Unicode's case and class rules.
//! A word costs one multiply per character and two lookups; a character
//! 4-gram is the last four folded bytes as one integer, one multiply and
//! one lookup per character.

/// How many bits of the hash choose a bucket: 2^18 buckets keep collisions
/// rare for chat-sized vocabularies.
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

/// The families a model was trained on; written in its file, so scoring
/// computes exactly what training did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FeatureSet {
    /// Character 4-grams as well as words. They catch words spelled to dodge
    /// a word list ("fr33", "v1agra") and cost about three times a
    /// word-only model's time per character (docs/MODEL.md).
    pub char_grams: bool,
}

impl FeatureSet {
    /// Words only.
    pub const WORDS: FeatureSet = FeatureSet { char_grams: false };
    /// Words and character 4-grams.
    pub const WORDS_AND_CHARS: FeatureSet = FeatureSet { char_grams: true };

    const CHAR_GRAMS_BIT: u32 = 1;

    /// The bits the model file stores.
    pub fn bits(self) -> u32 {
        if self.char_grams { Self::CHAR_GRAMS_BIT } else { 0 }
    }

    /// The set the model file's bits name; `None` for bits this build does
    /// not know.
    pub fn from_bits(bits: u32) -> Option<FeatureSet> {
        if bits & !Self::CHAR_GRAMS_BIT != 0 {
            return None;
        }
        Some(FeatureSet {
            char_grams: bits & Self::CHAR_GRAMS_BIT != 0,
        })
    }
}

/// The family a hashed feature belongs to. Each family is normalised on its
/// own (see [`FeatureCounts`]), so a long message does not drown its words
/// in character grams or the other way round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// Word unigrams and bigrams.
    Word,
    /// Character 4-grams.
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

/// Calls `emit(family, bucket)` for every hashed feature of `text` that
/// `set` names (a feature that occurs twice is emitted twice) and returns
/// the counts and the dense features. Deterministic, allocation-free, and
/// linear in the scored part of the text.
pub fn for_each_feature(text: &str, set: FeatureSet, emit: impl FnMut(Family, u32)) -> FeatureCounts {
    walk(text, set, emit).0
}

/// What the features of a text go to. [`walk`] owns its sink by value, so
/// a scorer's running sums are the walk's own locals (registers), not
/// stores through a pointer into the caller's frame at every feature.
pub(crate) trait Sink {
    fn feature(&mut self, family: Family, bucket: u32);
}

impl<F: FnMut(Family, u32)> Sink for F {
    #[inline(always)]
    fn feature(&mut self, family: Family, bucket: u32) {
        self(family, bucket)
    }
}

/// [`for_each_feature`], handing the sink back with the counts.
pub(crate) fn walk<S: Sink>(text: &str, set: FeatureSet, sink: S) -> (FeatureCounts, S) {
    let text = scored_part(text);
    let bytes = text.as_bytes();
    let mut stream = Stream::new(set, sink);
    // Letters, capitals, digits and visible characters, 16 bits each: a
    // scored text has at most 16 Ki characters, so no field overflows.
    let mut tally = 0u64;
    let mut currency = 0u32;
    let mut exclamations = 0u32;

    let mut at = 0usize;
    while let Some(&byte) = bytes.get(at) {
        if byte < 0x80 {
            let ascii = ASCII.get(usize::from(byte)).copied().unwrap_or(Ascii::NONE);
            tally += ascii.tally;
            if ascii.folded != 0 {
                stream.symbol(u32::from(ascii.folded), ascii.folded);
            } else {
                currency += u32::from(byte == b'$');
                exclamations += u32::from(byte == b'!');
                stream.separator();
            }
            at += 1;
            continue;
        }
        let Some(raw) = text.get(at..).and_then(|rest| rest.chars().next()) else {
            break;
        };
        at += raw.len_utf8();
        tally += tally_of(raw);
        currency += u32::from(matches!(raw, '£' | '€' | '¥'));
        if raw.is_alphanumeric() {
            for lower in raw.to_lowercase() {
                let code = if lower.is_numeric() {
                    u32::from(b'0')
                } else {
                    u32::from(lower)
                };
                stream.symbol(code, window_byte(code));
            }
        } else {
            stream.separator();
        }
    }
    let (mut counts, sink) = stream.finish();

    let field = |shift: u32| ((tally >> shift) & 0xffff) as u32;
    let links = count_links(bytes);
    counts.dense = [
        (1.0 + links as f32).ln(),
        ratio(field(DIGITS), field(VISIBLE)),
        ratio(field(UPPERCASE), field(LETTERS)),
        (1.0 + currency as f32).ln(),
        (1.0 + exclamations as f32).ln(),
    ];
    (counts, sink)
}

/// Where each count sits in the packed tally.
const LETTERS: u32 = 0;
const UPPERCASE: u32 = 16;
const DIGITS: u32 = 32;
const VISIBLE: u32 = 48;

/// What the packed tally gains for a character.
const fn tally_for(letter: bool, uppercase: bool, digit: bool, visible: bool) -> u64 {
    ((letter as u64) << LETTERS)
        | (((letter && uppercase) as u64) << UPPERCASE)
        | ((digit as u64) << DIGITS)
        | ((visible as u64) << VISIBLE)
}

fn tally_of(raw: char) -> u64 {
    tally_for(
        raw.is_alphabetic(),
        raw.is_uppercase(),
        raw.is_numeric(),
        !raw.is_whitespace(),
    )
}

/// An ASCII byte as the features see it.
#[derive(Clone, Copy)]
struct Ascii {
    /// What the tally gains: [`tally_of`] the byte.
    tally: u64,
    /// The byte lower-cased, `0` for any digit; zero for a separator.
    folded: u8,
}

impl Ascii {
    const NONE: Ascii = Ascii { tally: 0, folded: 0 };
}

/// Every ASCII byte's tally and folded form, what `char`'s own rules give
/// (checked by a test), so an ASCII byte costs two loads, not five
/// Unicode-table queries.
static ASCII: [Ascii; 128] = ascii_table();

const fn ascii_table() -> [Ascii; 128] {
    let mut table = [Ascii::NONE; 128];
    let mut at = 0;
    while at < table.len() {
        let byte = at as u8;
        let letter = byte.is_ascii_alphabetic();
        let digit = byte.is_ascii_digit();
        let space = matches!(byte, b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' ');
        table[at] = Ascii {
            tally: tally_for(letter, byte.is_ascii_uppercase(), digit, !space),
            folded: if digit {
                b'0'
            } else if letter {
                byte.to_ascii_lowercase()
            } else {
                0
            },
        };
        at += 1;
    }
    table
}

/// The normalised stream of symbols and separators, turned into features
/// as it goes. It owns the sink by its own type rather than as a trait
/// object, so that the sink's work (the model's sums) is inlined into the
/// loop and its sums stay in registers.
struct Stream<S> {
    char_grams: bool,
    sink: S,
    counts: FeatureCounts,
    /// The hash of the word being read, and of the previous word.
    word_hash: u64,
    in_word: bool,
    previous_word: Option<u64>,
    /// The last four symbols of the stream, one byte each.
    window: u32,
    /// How many symbols the window has seen, up to four.
    seen: u32,
    /// Whether the last symbol was a space, so runs of separators make one.
    last_was_space: bool,
}

impl<S: Sink> Stream<S> {
    fn new(set: FeatureSet, sink: S) -> Self {
        let mut stream = Stream {
            char_grams: set.char_grams,
            sink,
            counts: FeatureCounts::default(),
            word_hash: FNV_OFFSET,
            in_word: false,
            previous_word: None,
            window: 0,
            seen: 0,
            last_was_space: true,
        };
        // A leading space marks the start of the first word for char grams.
        stream.gram(b' ');
        stream
    }

    /// A letter or digit, folded: `code` for the word's hash, `byte` for
    /// the character window.
    #[inline(always)]
    fn symbol(&mut self, code: u32, byte: u8) {
        self.word_hash = fnv_step(self.word_hash, code);
        self.in_word = true;
        self.last_was_space = false;
        self.gram(byte);
    }

    /// Anything that is neither a letter nor a digit.
    #[inline(always)]
    fn separator(&mut self) {
        if self.in_word {
            self.end_word();
        }
        if !self.last_was_space {
            self.gram(b' ');
            self.last_was_space = true;
        }
    }

    #[inline(always)]
    fn gram(&mut self, byte: u8) {
        if !self.char_grams {
            return;
        }
        self.window = (self.window << 8) | u32::from(byte);
        if self.seen < 3 {
            self.seen += 1;
            return;
        }
        self.sink.feature(Family::Char, char_bucket(self.window));
        self.counts.chars += 1;
    }

    /// Emits the word that ends here, and the bigram it makes with the one
    /// before.
    #[inline(always)]
    fn end_word(&mut self) {
        let word = self.word_hash;
        self.sink.feature(Family::Word, bucket(word, SEED_UNIGRAM));
        self.counts.words += 1;
        if let Some(previous) = self.previous_word {
            self.sink
                .feature(Family::Word, bucket(previous.rotate_left(17) ^ word, SEED_BIGRAM));
            self.counts.words += 1;
        }
        self.previous_word = Some(word);
        self.word_hash = FNV_OFFSET;
        self.in_word = false;
    }

    fn finish(mut self) -> (FeatureCounts, S) {
        self.separator();
        (self.counts, self.sink)
    }
}

/// The byte a folded character takes in the character window: itself below
/// 256, otherwise eight bits of its hash with the top bit set.
fn window_byte(code: u32) -> u8 {
    if code <= 0xff {
        code as u8
    } else {
        0x80 | (code.wrapping_mul(0x9e37_79b1) >> 25) as u8
    }
}

/// Counts `http://`, `https://` and `www.` occurrences, case-insensitively.
fn count_links(bytes: &[u8]) -> u32 {
    let mut links = 0u32;
    let mut at = 0usize;
    while let Some(&byte) = bytes.get(at) {
        // Only an `h` or a `w` can start a link: the rest is not compared.
        let rest = || bytes.get(at..).unwrap_or_default();
        let link = match byte | 0x20 {
            b'h' => starts_with_ignore_case(rest(), b"http://") || starts_with_ignore_case(rest(), b"https://"),
            b'w' => starts_with_ignore_case(rest(), b"www."),
            _ => false,
        };
        if link {
            links += 1;
            at += 4;
        } else {
            at += 1;
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
/// same hash, a quarter of the work.
#[inline(always)]
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

/// Mixes a word's hash with a family seed (the splitmix64 finaliser) and
/// keeps [`HASH_BITS`] bits.
fn bucket(hash: u64, seed: u64) -> u32 {
    let mut z = hash ^ seed;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z & u64::from(HASH_BUCKETS - 1)) as u32
}

/// A character 4-gram's bucket: the window's four bytes are the gram
/// itself, so one multiply (Fibonacci hashing: the product's top bits)
/// spreads it.
#[inline(always)]
fn char_bucket(window: u32) -> u32 {
    ((u64::from(window) ^ SEED_CHAR).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - HASH_BITS)) as u32
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

    /// The ASCII table says of every byte what `char`'s own rules say, so
    /// the fast path and the Unicode path agree.
    #[test]
    fn the_ascii_table_agrees_with_char() {
        for byte in 0u8..0x80 {
            let c = char::from(byte);
            let ascii = ASCII[usize::from(byte)];
            assert_eq!(ascii.tally, tally_of(c), "{byte:#x}");
            assert_eq!(ascii.folded != 0, c.is_alphanumeric(), "{byte:#x}");
            if c.is_alphabetic() {
                assert_eq!(char::from(ascii.folded), c.to_ascii_lowercase(), "{byte:#x}");
            }
            if c.is_numeric() {
                assert_eq!(ascii.folded, b'0', "{byte:#x}");
            }
        }
    }

    fn collect(text: &str, set: FeatureSet) -> (Vec<(Family, u32)>, FeatureCounts) {
        let mut features = Vec::new();
        let counts = for_each_feature(text, set, |family, bucket| features.push((family, bucket)));
        (features, counts)
    }

    #[test]
    fn counts_match_what_is_emitted() {
        for set in [FeatureSet::WORDS, FeatureSet::WORDS_AND_CHARS] {
            let (features, counts) = collect("Call 0906 NOW!! www.example.com", set);
            let words = features.iter().filter(|(f, _)| *f == Family::Word).count();
            let chars = features.iter().filter(|(f, _)| *f == Family::Char).count();
            assert_eq!(words as u32, counts.words);
            assert_eq!(chars as u32, counts.chars);
            // call, 0000, now, www, example, com: 6 unigrams and 5 bigrams.
            assert_eq!(counts.words, 11);
            assert!(features.iter().all(|(_, bucket)| *bucket < HASH_BUCKETS));
        }
    }

    #[test]
    fn character_grams_come_only_when_asked_for() {
        assert_eq!(collect("free money now", FeatureSet::WORDS).1.chars, 0);
        // " abcd " is six symbols with the boundaries: three 4-grams.
        assert_eq!(collect("abcd", FeatureSet::WORDS_AND_CHARS).1.chars, 3);
        assert_eq!(collect("ab", FeatureSet::WORDS_AND_CHARS).1.chars, 1);
    }

    #[test]
    fn case_digits_and_separators_are_normalised() {
        for set in [FeatureSet::WORDS, FeatureSet::WORDS_AND_CHARS] {
            assert_eq!(collect("Hello,   World 123", set).0, collect("hello world 999", set).0);
            assert_eq!(collect("ÜBER Straße ٣", set).0, collect("über straße 0", set).0);
        }
    }

    #[test]
    fn other_scripts_make_words_and_grams() {
        let (features, counts) = collect("Привет, как дела? 你好", FeatureSet::WORDS_AND_CHARS);
        assert_eq!(counts.words, 4 + 3);
        assert!(counts.chars > 10);
        assert!(features.iter().all(|(_, bucket)| *bucket < HASH_BUCKETS));
    }

    #[test]
    fn empty_and_separator_only_texts_emit_nothing_but_the_boundary() {
        let (features, counts) = collect("", FeatureSet::WORDS_AND_CHARS);
        assert!(features.is_empty());
        assert_eq!(counts.words, 0);
        assert_eq!(counts.scale(Family::Word), 0.0);
        assert_eq!(collect("   !!! ...", FeatureSet::WORDS).1.words, 0);
    }

    #[test]
    fn dense_features_see_links_digits_capitals() {
        let (_, counts) = collect("SEE http://a.b AND https://c.d WWW.e.f £5 $", FeatureSet::WORDS);
        assert!((counts.dense[0] - 4f32.ln()).abs() < 1e-6);
        assert!(counts.dense[1] > 0.0);
        assert!(counts.dense[2] > 0.25);
        assert!((counts.dense[3] - 3f32.ln()).abs() < 1e-6);
    }

    #[test]
    fn feature_set_bits_round_trip() {
        for set in [FeatureSet::WORDS, FeatureSet::WORDS_AND_CHARS] {
            assert_eq!(FeatureSet::from_bits(set.bits()), Some(set));
        }
        assert_eq!(FeatureSet::from_bits(2), None);
    }

    #[test]
    fn scored_part_cuts_on_a_char_boundary() {
        let text = "é".repeat(MAX_SCORED_BYTES);
        let part = scored_part(&text);
        assert!(part.len() <= MAX_SCORED_BYTES);
        assert!(part.len() >= MAX_SCORED_BYTES - 1);
    }
}
