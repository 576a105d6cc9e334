//! Identifier newtypes, so that the compiler keeps a user id apart from a
//! sequence number even though both are `u64` on the wire.

use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id_type!(
    /// An account's permanent id. Never reused, even after the account is deleted.
    UserId
);
id_type!(
    /// A stored message's server-wide id.
    MessageId
);
id_type!(
    /// A message's position in its recipient's mailbox: strictly increasing,
    /// never reused, even after deletions.
    Seq
);
id_type!(
    /// One authenticated session (one login on one connection).
    SessionId
);

impl Seq {
    /// The sequence number after this one (saturating: stores never hand
    /// out u64::MAX, and a seq from a client must not overflow).
    pub fn next(self) -> Seq {
        Seq(self.0.saturating_add(1))
    }
}
