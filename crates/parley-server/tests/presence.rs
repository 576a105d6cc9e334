//! Presence by consent: an account's online state is shown only to the
//! accounts it approved, and a block stops messages, presence and
//! requests from the blocked account.

mod common;

use common::*;
use parley_client::{Client, ErrorCode, Event};
use parley_proto::v1::Subscription;
use parley_testkit::{Store, TestServer};

/// The next event, failing the test after [`WAIT`].
async fn next_event(client: &Client) -> Event {
    match tokio::time::timeout(WAIT, client.next_event()).await {
        Ok(Some(event)) => event,
        Ok(None) => panic!("connection ended"),
        Err(_) => panic!("no event within {WAIT:?}"),
    }
}

fn presence(name: &str, online: bool) -> String {
    format!(
        "{:?}",
        Event::Presence {
            name: name.into(),
            online
        }
    )
}

fn states(contacts: &[parley_proto::v1::AccountEntry]) -> Vec<(&str, Subscription, bool)> {
    contacts
        .iter()
        .map(|c| (c.name.as_str(), c.subscription(), c.online))
        .collect()
}

/// A stranger's account listing shows nobody online but the caller.
async fn a_strangers_list_shows_nobody_online(store: Store) {
    let server = TestServer::start(store);
    let _bob = server.user("bob").await;
    let mallory = server.user("mallory").await;
    let page = mallory.list_accounts("", "", 0).await.unwrap();
    let online: Vec<(&str, bool)> = page.accounts.iter().map(|a| (a.name.as_str(), a.online)).collect();
    assert_eq!(online, [("bob", false), ("mallory", true)]);
}
every_store!(
    a_strangers_list_shows_nobody_online,
    a_strangers_list_shows_nobody_online
);

/// Adding a contact asks for their presence; nothing flows until they
/// approve, and then it does.
async fn add_contact_gives_no_presence_until_approved(store: Store) {
    let server = TestServer::start(store);
    let alice = server.user("alice").await;
    server.client().await.register("bob", "pw-bob").await.unwrap();
    let list = alice.add_contact("bob").await.unwrap();
    assert_eq!(states(&list), [("bob", Subscription::Pending, false)]);
    alice.subscribe(0).await.unwrap();
    let bob = server.user("bob").await;
    bob.subscribe(0).await.unwrap();
    assert_no_push(&alice).await;
    assert_eq!(
        states(&alice.list_contacts().await.unwrap()),
        [("bob", Subscription::Pending, false)]
    );
    // Bob was offline when asked: the request waits for him.
    assert_eq!(bob.presence_requests().await.unwrap(), ["alice"]);
    // Asked while online, he is told at once.
    let carol = server.user("carol").await;
    carol.add_contact("bob").await.unwrap();
    match next_event(&bob).await {
        Event::PresenceRequest { from } => assert_eq!(from, "carol"),
        other => panic!("expected a presence request, got {other:?}"),
    }
    assert_eq!(bob.presence_requests().await.unwrap(), ["alice", "carol"]);
    // Approval: Alice is told, then sees Bob online.
    assert_eq!(bob.approve_presence("alice").await.unwrap(), ["carol"]);
    match next_event(&alice).await {
        Event::PresenceApproved { name } => assert_eq!(name, "bob"),
        other => panic!("expected an approval, got {other:?}"),
    }
    assert_eq!(format!("{:?}", next_event(&alice).await), presence("bob", true));
    assert_eq!(
        states(&alice.list_contacts().await.unwrap()),
        [("bob", Subscription::Approved, true)]
    );
    let page = alice.list_accounts("", "", 0).await.unwrap();
    let online: Vec<(&str, bool)> = page.accounts.iter().map(|a| (a.name.as_str(), a.online)).collect();
    assert_eq!(online, [("alice", true), ("bob", true), ("carol", false)]);
    // Carol, still waiting, sees nothing.
    let page = carol.list_accounts("bob", "", 0).await.unwrap();
    assert!(!page.accounts[0].online);
    // Bob going away is announced to Alice only.
    drop(bob);
    assert_eq!(format!("{:?}", next_event(&alice).await), presence("bob", false));
    // Approvals persist: Alice's next login sees Bob come online.
    drop(alice);
    let alice = server.user("alice").await;
    alice.subscribe(0).await.unwrap();
    let _bob = server.user("bob").await;
    assert_eq!(format!("{:?}", next_event(&alice).await), presence("bob", true));
    // Approving without a request is refused; unknown names are NO_SUCH_USER.
    assert_eq!(
        alice.approve_presence("carol").await.unwrap_err().code(),
        Some(ErrorCode::InvalidRequest)
    );
    assert_eq!(
        alice.approve_presence("nobody").await.unwrap_err().code(),
        Some(ErrorCode::NoSuchUser)
    );
}
every_store!(
    add_contact_gives_no_presence_until_approved,
    add_contact_gives_no_presence_until_approved
);

/// A denial tells nobody and shows nothing; a revoked approval and a
/// cancelled subscription stop presence at once.
async fn deny_revoke_and_cancel_stop_presence(store: Store) {
    let server = TestServer::start(store);
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    alice.subscribe(0).await.unwrap();
    alice.add_contact("bob").await.unwrap();
    assert_eq!(bob.deny_presence("alice").await.unwrap(), Vec::<String>::new());
    assert_no_push(&alice).await;
    assert_eq!(
        states(&alice.list_contacts().await.unwrap()),
        [("bob", Subscription::None, false)]
    );
    // Denying again changes nothing and is not an error.
    bob.deny_presence("alice").await.unwrap();
    // Asking again, approved this time.
    alice.add_contact("bob").await.unwrap();
    bob.approve_presence("alice").await.unwrap();
    assert!(matches!(next_event(&alice).await, Event::PresenceApproved { .. }));
    assert_eq!(format!("{:?}", next_event(&alice).await), presence("bob", true));
    // Bob takes it back: Alice sees him go offline, and nothing after.
    bob.deny_presence("alice").await.unwrap();
    assert_eq!(format!("{:?}", next_event(&alice).await), presence("bob", false));
    assert_eq!(
        states(&alice.list_contacts().await.unwrap()),
        [("bob", Subscription::None, false)]
    );
    let bob2 = server.user("bob").await;
    drop(bob2);
    assert_no_push(&alice).await;
    // Alice cancels her own subscription: nothing flows either.
    alice.add_contact("bob").await.unwrap();
    bob.approve_presence("alice").await.unwrap();
    assert!(matches!(next_event(&alice).await, Event::PresenceApproved { .. }));
    assert_eq!(format!("{:?}", next_event(&alice).await), presence("bob", true));
    let list = alice.cancel_presence("bob").await.unwrap();
    assert_eq!(states(&list), [("bob", Subscription::None, false)]);
    drop(bob);
    assert_no_push(&alice).await;
    assert!(!alice.list_accounts("bob", "", 0).await.unwrap().accounts[0].online);
}
every_store!(
    deny_revoke_and_cancel_stop_presence,
    deny_revoke_and_cancel_stop_presence
);

/// A block refuses the blocked account's messages as if the blocker did
/// not exist, ends presence both ways and hides its requests.
async fn block_stops_messages_presence_and_requests(store: Store) {
    let server = TestServer::start_with(store, &["--max-contacts", "2"]);
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    server.user("carol").await;
    server.user("dave").await;
    alice.subscribe(0).await.unwrap();
    bob.subscribe(0).await.unwrap();
    alice.send("bob", "before").await.unwrap();
    assert_eq!(bodies(&next_messages(&bob).await), ["before"]);
    alice.add_contact("bob").await.unwrap();
    assert!(matches!(next_event(&bob).await, Event::PresenceRequest { .. }));
    bob.approve_presence("alice").await.unwrap();
    assert!(matches!(next_event(&alice).await, Event::PresenceApproved { .. }));
    assert_eq!(format!("{:?}", next_event(&alice).await), presence("bob", true));

    assert_eq!(bob.block("alice").await.unwrap(), ["alice"]);
    assert_eq!(format!("{:?}", next_event(&alice).await), presence("bob", false));
    // Her messages are refused as if Bob did not exist.
    let refused = alice.send("bob", "after").await.unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::NoSuchUser));
    assert_no_push(&bob).await;
    // Her requests are taken but never shown, nor can they be approved.
    assert_eq!(
        states(&alice.add_contact("bob").await.unwrap()),
        [("bob", Subscription::Pending, false)]
    );
    assert_no_push(&bob).await;
    assert_eq!(bob.presence_requests().await.unwrap(), Vec::<String>::new());
    assert_eq!(
        bob.approve_presence("alice").await.unwrap_err().code(),
        Some(ErrorCode::InvalidRequest)
    );
    // Bob sees none of her presence either.
    assert_eq!(
        bob.add_contact("alice").await.unwrap_err().code(),
        Some(ErrorCode::InvalidRequest)
    );
    assert!(!bob.list_accounts("alice", "", 0).await.unwrap().accounts[0].online);
    // Blocking twice is fine; the limit counts blocks; oneself and unknown
    // names are refused.
    assert_eq!(bob.block("ALICE").await.unwrap(), ["alice"]);
    bob.block("carol").await.unwrap();
    assert_eq!(
        bob.block("dave").await.unwrap_err().code(),
        Some(ErrorCode::LimitReached)
    );
    assert_eq!(
        bob.block("bob").await.unwrap_err().code(),
        Some(ErrorCode::InvalidRequest)
    );
    assert_eq!(
        bob.block("nobody").await.unwrap_err().code(),
        Some(ErrorCode::NoSuchUser)
    );
    assert_eq!(bob.list_blocked().await.unwrap(), ["alice", "carol"]);
    // Unblocked: messages flow again; the request made meanwhile is gone.
    assert_eq!(bob.unblock("alice").await.unwrap(), ["carol"]);
    alice.send("bob", "again").await.unwrap();
    assert_eq!(bodies(&next_messages(&bob).await), ["again"]);
    assert_eq!(bob.presence_requests().await.unwrap(), Vec::<String>::new());
    assert_eq!(
        states(&alice.list_contacts().await.unwrap()),
        [("bob", Subscription::None, false)]
    );
}
every_store!(
    block_stops_messages_presence_and_requests,
    block_stops_messages_presence_and_requests
);

/// Refusing the web pager is a setting of one's own: asked and set over
/// the native protocol, not a block (neither listed nor counted).
async fn an_account_can_refuse_the_pager(store: Store) {
    let server = TestServer::start_with(store, &["--max-contacts", "1"]);
    let bob = server.user("bob").await;
    server.user("carol").await;
    assert!(bob.pager(None).await.unwrap(), "new accounts accept the pager");
    assert!(!bob.pager(Some(false)).await.unwrap());
    assert!(!bob.pager(None).await.unwrap());
    assert_eq!(bob.list_blocked().await.unwrap(), Vec::<String>::new());
    assert_eq!(
        bob.block("carol").await.unwrap(),
        ["carol"],
        "the pager takes no block's place"
    );
    let other = server.user("dave").await;
    assert!(other.pager(None).await.unwrap(), "one account's setting is its own");
    assert!(bob.pager(Some(true)).await.unwrap());
    assert!(bob.pager(None).await.unwrap());
}
every_store!(an_account_can_refuse_the_pager, an_account_can_refuse_the_pager);
