//! Presence by consent: an account's online state is shown only to the
//! accounts it approved, and a block stops messages, presence and
//! requests from the blocked account.

mod common;

use std::time::Duration;

use common::*;
use parley_client::{Event, ErrorCode};
use parley_testkit::{Store, TestServer};

/// A stranger's account listing shows nobody online but the caller.
async fn a_strangers_list_shows_nobody_online(store: Store) {
    let server = TestServer::start(store);
    let _bob = server.user("bob").await;
    let mallory = server.user("mallory").await;
    let page = mallory.list_accounts("", "", 0).await.unwrap();
    let online: Vec<(&str, bool)> = page.accounts.iter().map(|a| (a.name.as_str(), a.online)).collect();
    assert_eq!(online, [("bob", false), ("mallory", true)]);
}
both_stores!(a_strangers_list_shows_nobody_online, a_strangers_list_shows_nobody_online);

/// Adding a contact asks for their presence; nothing flows until they
/// approve.
async fn add_contact_gives_no_presence_until_approved(store: Store) {
    let server = TestServer::start(store);
    let mallory = server.user("mallory").await;
    server.client().await.register("bob", "pw-bob").await.unwrap();
    mallory.add_contact("bob").await.unwrap();
    mallory.subscribe(0).await.unwrap();
    let _bob = server.user("bob").await;
    assert_no_push(&mallory).await;
    let contacts = mallory.list_contacts().await.unwrap();
    assert_eq!((contacts[0].name.as_str(), contacts[0].online), ("bob", false));
}
both_stores!(
    add_contact_gives_no_presence_until_approved,
    add_contact_gives_no_presence_until_approved
);
