//! The model file: its binary format, loading it, and scoring with it.
//!
//! The format (all integers and floats little-endian):
//!
//! ```text
//! magic        8 bytes  "PLYFLT02"
//! hash_bits    u32      must equal features::HASH_BITS
//! features     u32      the feature families (features::FeatureSet::bits)
//! bias         f32
//! quarantine   f32      recommended quarantine threshold, in [0, 1]
//! reject       f32      recommended reject threshold, in [quarantine, 1]
//! label_len    u16      then label_len bytes of UTF-8 (corpus, date, seed)
//! count        u32      then count entries of (index u32, weight f32),
//!                       indices strictly increasing and < FEATURE_SPACE
//! checksum     u64      FNV-1a 64 of every byte before it
//! ```
//!
//! Only non-zero weights are stored, so the file stays small; loading
//! packs them (see `Weights`) so that scoring is one cached lookup per
//! feature.

use std::sync::OnceLock;

use sha2::{Digest, Sha256};

use crate::features::{FEATURE_SPACE, Family, FeatureSet, HASH_BITS, HASH_BUCKETS, Sink, walk};

/// The first bytes of every model file.
pub const MAGIC: &[u8; 8] = b"PLYFLT02";

/// The first bytes of the first format, whose character 3- to 5-grams this
/// build no longer computes: such a file is refused with
/// [`ModelError::OldFormat`], not scored wrongly.
const MAGIC_V1: &[u8; 8] = b"PLYFLT01";

/// The longest label a model file may carry.
pub const MAX_LABEL_BYTES: usize = 1024;

/// The model trained and committed with this crate (see docs/MODEL.md).
static BUILTIN_BYTES: &[u8] = include_bytes!("../model/spam.bin");

/// Why model bytes could not be loaded.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ModelError {
    /// The bytes end before the format says they should.
    #[error("model file is truncated (needed {needed} more bytes at offset {offset})")]
    Truncated { offset: usize, needed: usize },
    /// The bytes do not start with [`MAGIC`].
    #[error("not a parley-filter model file (bad magic)")]
    BadMagic,
    /// A model file of the first format, made before the features changed.
    #[error(
        "model file is of an older format (PLYFLT01) that this build cannot score: train it again with parley-train"
    )]
    OldFormat,
    /// The file names feature families this build does not know.
    #[error("model uses unknown feature families (bits {0:#x})")]
    UnknownFeatures(u32),
    /// The model was trained with another number of hash buckets.
    #[error("model uses {found} hash bits, this build uses {expected}")]
    HashBits { found: u32, expected: u32 },
    /// The trailing checksum does not match the contents.
    #[error("model file checksum mismatch: the file is corrupt")]
    Checksum,
    /// Bytes follow the checksum.
    #[error("model file has {0} unexpected trailing bytes")]
    TrailingBytes(usize),
    /// A threshold, the bias or a weight is not a finite number in range.
    #[error("model file has an invalid value: {0}")]
    InvalidValue(&'static str),
    /// A weight's index is out of range or not strictly increasing.
    #[error("model file has a bad feature index {index} in entry {entry}")]
    BadIndex { entry: u32, index: u32 },
    /// The label is longer than [`MAX_LABEL_BYTES`] or not UTF-8.
    #[error("model file has an invalid label")]
    BadLabel,
}

/// A model's weights, packed so that scoring stays in the cache: one bit
/// per feature index says whether its weight is non-zero (32 KiB), a count
/// per 64 indices says how many non-zero ones come before (16 KiB), and
/// only the non-zero weights are kept, in index order (about 128 KiB for
/// the built-in model). A dense array of every index takes 1 MiB, a
/// core's whole L2 cache, for lookups made at every character of a
/// message. The same weights, the same scores, to the bit.
#[derive(Clone, Debug)]
struct Weights {
    present: Vec<u64>,
    before: Vec<u32>,
    values: Vec<f32>,
}

impl Weights {
    fn from_dense(dense: &[f32]) -> Weights {
        let words = dense.len().div_ceil(64);
        let mut present = vec![0u64; words];
        let mut before = Vec::with_capacity(words);
        let mut values = Vec::new();
        for (chunk, bits) in dense.chunks(64).zip(present.iter_mut()) {
            before.push(u32::try_from(values.len()).unwrap_or(u32::MAX));
            for (bit, weight) in chunk.iter().enumerate() {
                if *weight != 0.0 {
                    *bits |= 1 << bit;
                    values.push(*weight);
                }
            }
        }
        Weights {
            present,
            before,
            values,
        }
    }

    /// The weight of feature `index` (0 outside the model).
    #[inline]
    fn get(&self, index: u32) -> f32 {
        let word = (index >> 6) as usize;
        let bit = index & 63;
        let Some(&bits) = self.present.get(word) else {
            return 0.0;
        };
        if (bits >> bit) & 1 == 0 {
            return 0.0;
        }
        let below = (bits & ((1u64 << bit) - 1)).count_ones();
        let at = self.before.get(word).copied().unwrap_or(0).saturating_add(below);
        self.values.get(at as usize).copied().unwrap_or(0.0)
    }
}

/// A loaded spam model. Scoring is pure and deterministic: the same text
/// and model always give the same score.
#[derive(Clone, Debug)]
pub struct Model {
    /// The feature families it was trained on.
    features: FeatureSet,
    /// The weights by feature index; zero where the file stores none.
    weights: Weights,
    /// The intercept of the logistic regression.
    bias: f32,
    /// The recommended threshold above which a message is quarantined.
    quarantine_threshold: f32,
    /// The recommended, stricter threshold above which it is rejected.
    reject_threshold: f32,
    /// What the training command wrote: corpus, training date, seed.
    label: String,
    /// `<label date>-<12 hex digits of the file's SHA-256>`; names the
    /// model in logs, metrics and `parleyd ctl status`.
    version: String,
    /// How many non-zero weights the file stores.
    non_zero: usize,
}

impl Model {
    /// Loads a model from the bytes of a model file, checking everything:
    /// a truncated or corrupt file is an error, never a panic.
    pub fn load(bytes: &[u8]) -> Result<Model, ModelError> {
        let mut reader = Reader { bytes, offset: 0 };
        let magic = reader.take(MAGIC.len())?;
        if magic == MAGIC_V1 {
            return Err(ModelError::OldFormat);
        }
        if magic != MAGIC {
            return Err(ModelError::BadMagic);
        }
        let hash_bits = reader.u32()?;
        if hash_bits != HASH_BITS {
            return Err(ModelError::HashBits {
                found: hash_bits,
                expected: HASH_BITS,
            });
        }
        let feature_bits = reader.u32()?;
        let features = FeatureSet::from_bits(feature_bits).ok_or(ModelError::UnknownFeatures(feature_bits))?;
        let bias = finite(reader.f32()?, "bias")?;
        let quarantine_threshold = reader.f32()?;
        let reject_threshold = reader.f32()?;
        if !(0.0..=1.0).contains(&quarantine_threshold) {
            return Err(ModelError::InvalidValue("quarantine threshold"));
        }
        if !(quarantine_threshold..=1.0).contains(&reject_threshold) {
            return Err(ModelError::InvalidValue("reject threshold"));
        }
        let label_len = usize::from(reader.u16()?);
        if label_len > MAX_LABEL_BYTES {
            return Err(ModelError::BadLabel);
        }
        let label = std::str::from_utf8(reader.take(label_len)?)
            .map_err(|_| ModelError::BadLabel)?
            .to_owned();
        let count = reader.u32()?;
        // Check the whole length before allocating, so a corrupt count
        // cannot ask for gigabytes.
        let entries_len = (count as usize).saturating_mul(8);
        reader.ensure(entries_len.saturating_add(8))?;
        let mut weights = vec![0.0f32; FEATURE_SPACE as usize];
        let mut previous: Option<u32> = None;
        for entry in 0..count {
            let index = reader.u32()?;
            let weight = finite(reader.f32()?, "weight")?;
            if index >= FEATURE_SPACE || previous.is_some_and(|p| index <= p) {
                return Err(ModelError::BadIndex { entry, index });
            }
            previous = Some(index);
            if let Some(slot) = weights.get_mut(index as usize) {
                *slot = weight;
            }
        }
        let body_len = reader.offset;
        let checksum = reader.u64()?;
        if checksum != fnv1a64(&bytes[..body_len]) {
            return Err(ModelError::Checksum);
        }
        if reader.offset != bytes.len() {
            return Err(ModelError::TrailingBytes(bytes.len() - reader.offset));
        }
        let digest = Sha256::digest(bytes);
        let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
        let date = label
            .split_whitespace()
            .find(|word| looks_like_date(word))
            .unwrap_or("undated");
        let version = format!("{date}-{hex}");
        Ok(Model {
            features,
            weights: Weights::from_dense(&weights),
            bias,
            quarantine_threshold,
            reject_threshold,
            label,
            version,
            non_zero: count as usize,
        })
    }

    /// The model committed with this crate, loaded once. The crate's tests
    /// load it, so an error here means a broken build, but it is still
    /// returned rather than panicking.
    pub fn builtin() -> Result<&'static Model, ModelError> {
        static BUILTIN: OnceLock<Result<Model, ModelError>> = OnceLock::new();
        BUILTIN
            .get_or_init(|| Model::load(BUILTIN_BYTES))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The probability, in [0, 1], that `text` is spam. Only the first
    /// [`crate::MAX_SCORED_BYTES`] bytes are read; no allocation.
    pub fn score(&self, text: &str) -> f32 {
        let sums = Sums {
            weights: &self.weights,
            words: 0.0,
            chars: 0.0,
        };
        let (counts, sums) = walk(text, self.features, sums);
        let mut z = self.bias + sums.words * counts.scale(Family::Word) + sums.chars * counts.scale(Family::Char);
        for (k, value) in counts.dense.iter().enumerate() {
            let index = HASH_BUCKETS as usize + k;
            z += value * self.weights.get(index as u32);
        }
        sigmoid(z)
    }

    /// Names this model: the training date from its label and the start of
    /// the file's SHA-256, e.g. `2026-12-04-3fa2c1d09e7b`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The training command's description of the model (corpus, date, seed).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The feature families the model was trained on.
    pub fn features(&self) -> FeatureSet {
        self.features
    }

    /// The recommended threshold for quarantining (chosen on a validation
    /// split at training time; see docs/MODEL.md).
    pub fn quarantine_threshold(&self) -> f32 {
        self.quarantine_threshold
    }

    /// The recommended, stricter threshold for rejecting outright.
    pub fn reject_threshold(&self) -> f32 {
        self.reject_threshold
    }

    /// How many non-zero weights the model has.
    pub fn non_zero_weights(&self) -> usize {
        self.non_zero
    }
}

/// What the training command needs to write a model file.
#[derive(Clone, Debug)]
pub struct ModelParts<'a> {
    /// The feature families the weights are for.
    pub features: FeatureSet,
    /// The intercept.
    pub bias: f32,
    /// The recommended quarantine threshold.
    pub quarantine_threshold: f32,
    /// The recommended reject threshold.
    pub reject_threshold: f32,
    /// Corpus, training date and seed, in words.
    pub label: &'a str,
    /// `(feature index, weight)`; zero weights are dropped, order does not matter.
    pub weights: &'a [(u32, f32)],
}

/// Writes a model file. The result loads with [`Model::load`] when the
/// parts are in range (thresholds in [0, 1], indices < FEATURE_SPACE).
pub fn encode(parts: &ModelParts<'_>) -> Vec<u8> {
    let mut weights: Vec<(u32, f32)> = parts.weights.iter().copied().filter(|(_, w)| *w != 0.0).collect();
    weights.sort_by_key(|(index, _)| *index);
    weights.dedup_by_key(|(index, _)| *index);
    let label = parts.label.as_bytes();
    let label = &label[..label.len().min(MAX_LABEL_BYTES)];
    let mut out = Vec::with_capacity(64 + label.len() + weights.len() * 8);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&HASH_BITS.to_le_bytes());
    out.extend_from_slice(&parts.features.bits().to_le_bytes());
    out.extend_from_slice(&parts.bias.to_le_bytes());
    out.extend_from_slice(&parts.quarantine_threshold.to_le_bytes());
    out.extend_from_slice(&parts.reject_threshold.to_le_bytes());
    out.extend_from_slice(&(label.len() as u16).to_le_bytes());
    out.extend_from_slice(label);
    out.extend_from_slice(&(weights.len() as u32).to_le_bytes());
    for (index, weight) in &weights {
        out.extend_from_slice(&index.to_le_bytes());
        out.extend_from_slice(&weight.to_le_bytes());
    }
    let checksum = fnv1a64(&out);
    out.extend_from_slice(&checksum.to_le_bytes());
    out
}

/// The weights of a text's features, summed per family.
struct Sums<'w> {
    weights: &'w Weights,
    words: f32,
    chars: f32,
}

impl Sink for Sums<'_> {
    #[inline(always)]
    fn feature(&mut self, family: Family, bucket: u32) {
        let weight = self.weights.get(bucket);
        match family {
            Family::Word => self.words += weight,
            Family::Char => self.chars += weight,
        }
    }
}

fn sigmoid(z: f32) -> f32 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

fn finite(value: f32, what: &'static str) -> Result<f32, ModelError> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(ModelError::InvalidValue(what))
    }
}

/// Whether `word` is written as a `YYYY-MM-DD` date, as a model's
/// training date is (in its label, and on the trainer's command line).
pub fn looks_like_date(word: &str) -> bool {
    let bytes = word.as_bytes();
    bytes.len() == 10
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes
            .iter()
            .enumerate()
            .all(|(i, b)| i == 4 || i == 7 || b.is_ascii_digit())
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// A bounds-checked cursor over the model bytes.
struct Reader<'a> {
    /// The whole file.
    bytes: &'a [u8],
    /// How far it has been read.
    offset: usize,
}

impl<'a> Reader<'a> {
    fn ensure(&self, len: usize) -> Result<(), ModelError> {
        let available = self.bytes.len().saturating_sub(self.offset);
        if available < len {
            return Err(ModelError::Truncated {
                offset: self.offset,
                needed: len - available,
            });
        }
        Ok(())
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], ModelError> {
        self.ensure(len)?;
        let slice = self
            .bytes
            .get(self.offset..self.offset + len)
            .ok_or(ModelError::Truncated {
                offset: self.offset,
                needed: len,
            })?;
        self.offset += len;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ModelError> {
        let mut array = [0u8; N];
        array.copy_from_slice(self.take(N)?);
        Ok(array)
    }

    fn u16(&mut self) -> Result<u16, ModelError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, ModelError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, ModelError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn f32(&mut self) -> Result<f32, ModelError> {
        Ok(f32::from_le_bytes(self.array()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The packed weights answer what the dense array held, everywhere.
    #[test]
    fn packed_weights_are_the_dense_ones() {
        let mut dense = vec![0.0f32; 1000];
        for (i, w) in dense.iter_mut().enumerate() {
            if i % 7 == 0 || i % 64 == 63 || i < 3 {
                *w = i as f32 - 500.5;
            }
        }
        let packed = Weights::from_dense(&dense);
        for (i, w) in dense.iter().enumerate() {
            assert_eq!(packed.get(i as u32).to_bits(), w.to_bits(), "index {i}");
        }
        assert_eq!(packed.get(1000), 0.0);
        assert_eq!(packed.get(u32::MAX), 0.0);
    }
}
