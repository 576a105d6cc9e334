//! What a remote score comes to when there is none, and the callback that
//! receives it: shared by the batching client (`remote`) and the server's
//! filter pipeline, which needs them without the client's dependencies.

/// Why a text got no score.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unscored {
    /// Its batch got no answer within the scorer's timeout.
    #[error("the inference server did not answer in time")]
    Timeout,
    /// Its batch could not reach the server (refused, reset, closed early).
    #[error("the inference server is unreachable: {0}")]
    Unreachable(String),
    /// The server answered, but not with one score in [0, 1] per text.
    #[error("the inference server answered wrongly: {0}")]
    BadAnswer(String),
    /// A recent failure paused the scorer; the server was not asked.
    #[error("remote scoring is paused after a failure")]
    Paused,
    /// The scorer closed before the text was sent.
    #[error("the remote scorer is closed")]
    Closed,
    /// The scorer's queue was full, so the text was never queued. The
    /// scorer gives the callback back instead of calling it; a caller that
    /// answers it at once says why with this.
    #[error("the remote scorer's queue is full")]
    Overloaded,
}

/// What the scorer calls with a text's outcome: on the dispatcher task, in
/// submission order, exactly once. It should only do a little synchronous
/// work (such as submitting the next step somewhere else).
pub type Done = Box<dyn FnOnce(Result<f32, Unscored>) + Send>;
