//! The committed model's behaviour on fixed examples, and loading bad bytes.
//! A retrain that calls obvious spam ham (or everyday chat spam) fails here.

use parley_filter::features::FeatureSet;
use parley_filter::{MAX_SCORED_BYTES, Model, ModelError, ModelParts, encode};

/// Spam that any retrained model must quarantine. (Modern phishing such as
/// "your account has been suspended, verify your card at <link>" scores
/// about 0.5 today, and a pharmacy advert about 0.15, both below quarantine:
/// the 2002 corpus has little of either in chat-sized form.
/// docs/MODEL.md lists this weakness.)
const SPAM: &[&str] = &[
    "WINNER!! You have won a £1000 prize, call 09061701461 to claim now",
    // Spelled to dodge a word list: the character grams still read it.
    "W1NNER!! Y0u h4ve w0n a £1000 pr1ze, c4ll 09061701461 to cla1m n0w",
    "Congratulations! You have been selected to receive a FREE $500 gift card. Click here http://bit.ly/claim-now",
    "Make money fast!!! Earn $5000 a week from home, no experience needed. Reply now to get started",
];

/// Everyday chat that any retrained model must let through.
const HAM: &[&str] = &[
    "are we still on for lunch tomorrow?",
    "ok see you at 7",
    "running 10 minutes late, sorry!",
    "can you pick up some milk on the way home",
    "did you see the match last night?",
    "thanks for yesterday, it was great",
    "happy birthday! have a great day",
    "I left my keys at the office, can you grab them?",
];

fn builtin() -> &'static Model {
    match Model::builtin() {
        Ok(model) => model,
        Err(error) => panic!("the committed model does not load: {error}"),
    }
}

#[test]
fn builtin_model_loads_with_sane_metadata() {
    let model = builtin();
    assert!(model.version().starts_with("20"), "version {}", model.version());
    assert_eq!(model.version().len(), "2026-12-04-".len() + 12);
    assert!(model.quarantine_threshold() > 0.0 && model.quarantine_threshold() < 1.0);
    assert!(model.reject_threshold() >= model.quarantine_threshold());
    assert!(model.reject_threshold() <= 1.0);
    assert!(model.non_zero_weights() > 1000);
    assert!(model.label().contains("spam-assassin"));
}

#[test]
fn obvious_spam_scores_above_the_quarantine_threshold() {
    let model = builtin();
    for text in SPAM {
        let score = model.score(text);
        assert!(score >= model.quarantine_threshold(), "spam scored {score}: {text}");
    }
}

#[test]
fn everyday_chat_scores_below_the_quarantine_threshold() {
    let model = builtin();
    for text in HAM {
        let score = model.score(text);
        assert!(score < model.quarantine_threshold(), "chat scored {score}: {text}");
    }
}

#[test]
fn scores_are_probabilities_and_deterministic() {
    let model = builtin();
    for text in SPAM.iter().chain(HAM) {
        let score = model.score(text);
        assert!((0.0..=1.0).contains(&score));
        assert_eq!(score.to_bits(), model.score(text).to_bits());
    }
}

#[test]
fn empty_odd_and_huge_inputs_are_scored() {
    let model = builtin();
    for text in ["", " ", "\0\0\0", "!!!!!!!!", "é", "🙂🙂🙂", "\u{202e}reversed"] {
        let score = model.score(text);
        assert!((0.0..=1.0).contains(&score), "{text:?} scored {score}");
    }
    // 1 MB of text: only the first MAX_SCORED_BYTES count, so it scores like its prefix.
    let huge = "ok see you at 7 ".repeat(1 << 16);
    assert!(huge.len() >= 1 << 20);
    let score = model.score(&huge);
    assert!((0.0..=1.0).contains(&score));
    let prefix = &huge[..MAX_SCORED_BYTES];
    assert_eq!(score.to_bits(), model.score(prefix).to_bits());
    // A multi-byte character straddling the cut must not panic.
    let straddling = format!("a{}", "€".repeat(MAX_SCORED_BYTES));
    assert!((0.0..=1.0).contains(&model.score(&straddling)));
}

fn small_model_bytes() -> Vec<u8> {
    encode(&ModelParts {
        features: FeatureSet::WORDS,
        bias: -1.0,
        quarantine_threshold: 0.6,
        reject_threshold: 0.9,
        label: "test model 2026-01-02",
        weights: &[(3, 0.5), (1, -0.25), (262_144, 2.0)],
    })
}

#[test]
fn an_encoded_model_round_trips() {
    let model = match Model::load(&small_model_bytes()) {
        Ok(model) => model,
        Err(error) => panic!("{error}"),
    };
    assert_eq!(model.non_zero_weights(), 3);
    assert_eq!(model.quarantine_threshold(), 0.6);
    assert_eq!(model.reject_threshold(), 0.9);
    assert_eq!(model.label(), "test model 2026-01-02");
    assert!(model.version().starts_with("2026-01-02-"));
    // No features at all: the score is the sigmoid of the bias.
    let expected = 1.0 / (1.0 + 1f32.exp());
    assert!((model.score("") - expected).abs() < 1e-6);
}

#[test]
fn every_truncation_of_a_model_is_an_error() {
    let bytes = small_model_bytes();
    for len in 0..bytes.len() {
        assert!(Model::load(&bytes[..len]).is_err(), "truncated to {len} bytes loaded");
    }
    let builtin = include_bytes!("../model/spam.bin");
    for len in [0, 7, 8, 20, 40, builtin.len() / 2, builtin.len() - 1] {
        assert!(
            Model::load(&builtin[..len]).is_err(),
            "builtin truncated to {len} bytes loaded"
        );
    }
}

#[test]
fn every_single_byte_corruption_is_an_error() {
    let bytes = small_model_bytes();
    for i in 0..bytes.len() {
        let mut corrupt = bytes.clone();
        corrupt[i] ^= 0x41;
        assert!(Model::load(&corrupt).is_err(), "flipping byte {i} still loaded");
    }
}

#[test]
fn specific_load_errors_are_named() {
    assert_eq!(
        Model::load(b"NOTAMODEL-------------------").err(),
        Some(ModelError::BadMagic)
    );
    let mut trailing = small_model_bytes();
    trailing.push(0);
    assert_eq!(Model::load(&trailing).err(), Some(ModelError::TrailingBytes(1)));
    let out_of_range = encode(&ModelParts {
        features: FeatureSet::WORDS,
        bias: 0.0,
        quarantine_threshold: 0.5,
        reject_threshold: 0.9,
        label: "",
        weights: &[(u32::MAX, 1.0)],
    });
    assert!(matches!(Model::load(&out_of_range), Err(ModelError::BadIndex { .. })));
    let bad_threshold = encode(&ModelParts {
        features: FeatureSet::WORDS,
        bias: 0.0,
        quarantine_threshold: 0.9,
        reject_threshold: 0.5,
        label: "",
        weights: &[],
    });
    assert_eq!(
        Model::load(&bad_threshold).err(),
        Some(ModelError::InvalidValue("reject threshold"))
    );
    // A huge entry count must fail on length, not try to allocate.
    let mut huge_count = small_model_bytes();
    let count_offset = 8 + 4 + 4 + 4 + 4 + 4 + 2 + "test model 2026-01-02".len();
    huge_count[count_offset..count_offset + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(Model::load(&huge_count), Err(ModelError::Truncated { .. })));
    // Feature families this build does not know.
    let mut unknown = small_model_bytes();
    unknown[12..16].copy_from_slice(&0x80u32.to_le_bytes());
    assert_eq!(Model::load(&unknown).err(), Some(ModelError::UnknownFeatures(0x80)));
    // A file of the first format: refused by name, not scored with other features.
    let mut first_format = small_model_bytes();
    first_format[..8].copy_from_slice(b"PLYFLT01");
    assert_eq!(Model::load(&first_format).err(), Some(ModelError::OldFormat));
}

#[test]
fn the_builtin_model_reads_character_grams() {
    // The committed model is trained with character 4-grams (docs/MODEL.md):
    // a word spelled to dodge a word list still reads as what it is.
    assert_eq!(Model::builtin().unwrap().features(), FeatureSet::WORDS_AND_CHARS);
}
