//! The shared queue as an admin sees it, beyond one node's memory: the
//! messages of every node (or every node but one) listed, counted and
//! shown from the database; hold, release, retry and delete passed to the
//! node that holds a message, or applied in the database when no live node
//! holds it. A running node uses this for the messages it does not hold;
//! the CLI uses it whole when this node's server is not running.

use crate::queue::{
    Changed, MessageDetail, MessageSummary, QueueAnswer, QueueCommand, QueueStats, Selector,
};
use crate::spool::{Envelope, MessageState, QueueId};

use super::db::NOW;

/// Messages a listing shows at most.
const LIST_MAX: i64 = 100_000;

/// The most of a message's header section `show` returns.
const HEADERS_SHOWN: usize = 1 << 20;

/// A queue command from the CLI of a node whose server is not running,
/// answered from the database alone (this node holds nothing meanwhile).
pub fn answer_offline(
    cluster: &crate::config::ClusterConfig,
    command: &QueueCommand,
) -> Result<QueueAnswer, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let pool = super::db::pool(cluster)?;
        let mut client = pool.get().await.map_err(|e| {
            format!(
                "cluster.database: cannot connect: {}",
                super::db::describe(&e)
            )
        })?;
        let describe = |e: tokio_postgres::Error| super::db::describe(&e);
        Ok(match command {
            QueueCommand::List => QueueAnswer::List {
                messages: list(&client, None).await.map_err(describe)?,
            },
            QueueCommand::Stats => QueueAnswer::Stats {
                stats: stats(&client, None).await.map_err(describe)?,
            },
            QueueCommand::Show { id, .. } => match show(&client, id).await? {
                Some(message) => QueueAnswer::Show {
                    message: Box::new(message),
                },
                None => QueueAnswer::error(format!("no message {id} in the queue")),
            },
            _ => {
                let changed = change(&mut client, command, None).await?;
                match command_id(command) {
                    Some(id) if changed.is_empty() => {
                        QueueAnswer::error(format!("no message {id} in the queue"))
                    }
                    _ => QueueAnswer::Changed { changed },
                }
            }
        })
    })
}

/// The one message a command names, if it names one.
fn command_id(command: &QueueCommand) -> Option<&QueueId> {
    match command.selector()? {
        Selector::Id(id) => Some(id),
        _ => None,
    }
}

/// Every message but `except`'s (all of them with None), oldest first,
/// each with the node that holds it (none once its lease has ended).
pub async fn list(
    client: &tokio_postgres::Client,
    except: Option<i32>,
) -> Result<Vec<MessageSummary>, tokio_postgres::Error> {
    let rows = client
        .query(
            &format!(
                "SELECT id, envelope, state, held,
                        CASE WHEN lease_until >= {NOW} THEN owner END AS holder
                   FROM portcullis_message
                  WHERE $1::int4 IS NULL OR owner IS DISTINCT FROM $1
                  ORDER BY id LIMIT $2"
            ),
            &[&except, &LIST_MAX],
        )
        .await?;
    let mut listed: Vec<MessageSummary> = rows
        .iter()
        .filter_map(|row| {
            let id = QueueId::parse(row.get::<_, &str>(0))?;
            let envelope: Envelope = serde_json::from_str(row.get(1)).ok()?;
            let state: MessageState = serde_json::from_str(row.get(2)).ok()?;
            let holder: Option<i32> = row.get(4);
            let mut summary = MessageSummary::of(&id, &envelope, &state, row.get(3), false);
            summary.node = holder.and_then(|n| u8::try_from(n).ok());
            Some(summary)
        })
        .collect();
    listed.sort_by(|a, b| (a.received_at, &a.id).cmp(&(b.received_at, &b.id)));
    Ok(listed)
}

/// The counts of every message but `except`'s (all with None).
pub async fn stats(
    client: &tokio_postgres::Client,
    except: Option<i32>,
) -> Result<QueueStats, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT count(*),
                    count(*) FILTER (WHERE held),
                    coalesce(sum((SELECT count(*)
                                    FROM jsonb_array_elements(state::jsonb -> 'recipients') r
                                   WHERE r ->> 'status' = 'queued')), 0)::int8,
                    min((envelope::jsonb ->> 'received_at')::int8)
               FROM portcullis_message
              WHERE $1::int4 IS NULL OR owner IS DISTINCT FROM $1",
            &[&except],
        )
        .await?;
    let count = |i: usize| usize::try_from(row.get::<_, i64>(i)).unwrap_or_default();
    Ok(QueueStats {
        messages: count(0),
        held: count(1),
        recipients_queued: count(2),
        oldest_received_at: row.get(3),
        ..Default::default()
    })
}

/// One message as stored: envelope, state and header section.
pub async fn show(
    client: &tokio_postgres::Client,
    id: &QueueId,
) -> Result<Option<MessageDetail>, String> {
    let row = client
        .query_opt(
            // The header section only: the body may be large.
            "SELECT envelope, state, held, substring(body from 1 for $2) FROM portcullis_message WHERE id = $1",
            &[&id.as_str(), &(HEADERS_SHOWN as i32)],
        )
        .await
        .map_err(|e| super::db::describe(&e))?;
    let Some(row) = row else {
        return Ok(None);
    };
    let unreadable = |e: serde_json::Error| format!("{id}: unreadable in the database: {e}");
    let envelope: Envelope = serde_json::from_str(row.get(0)).map_err(unreadable)?;
    let mut state: MessageState = serde_json::from_str(row.get(1)).map_err(unreadable)?;
    state.held = row.get(2);
    Ok(Some(MessageDetail {
        envelope,
        state,
        in_flight: false,
        headers: header_section(row.get(3)),
        body: None,
    }))
}

/// The lines before the first empty one.
fn header_section(content: &[u8]) -> String {
    let mut end = content.len();
    for (i, line) in content
        .split_inclusive(|b| *b == b'\n')
        .scan(0, |at, line| {
            let start = *at;
            *at += line.len();
            Some((start, line))
        })
    {
        if line == b"\r\n" || line == b"\n" {
            end = i;
            break;
        }
    }
    String::from_utf8_lossy(&content[..end]).into_owned()
}

/// Applies a changing command (hold, release, retry, delete) to the
/// messages it selects, `except`'s left out (that node applies them
/// itself). A message a live node holds gets the command passed to it;
/// one no live node holds is changed here, its fence moved on so that a
/// node that held it before writes nothing over the change.
pub async fn change(
    client: &mut tokio_postgres::Client,
    command: &QueueCommand,
    except: Option<i32>,
) -> Result<Vec<Changed>, String> {
    let describe = |e: tokio_postgres::Error| super::db::describe(&e);
    let Some(select) = command.selector() else {
        return Ok(Vec::new());
    };
    let ids = selected(client, select, except).await.map_err(describe)?;
    let text = serde_json::to_string(command).map_err(|e| e.to_string())?;
    let mut changed = Vec::new();
    for id in ids {
        let tx = client.transaction().await.map_err(describe)?;
        // Gone since it was selected (delivered, deleted): skipped.
        let Some((holder, state)) = lock_message(&tx, &id).await.map_err(describe)? else {
            continue;
        };
        let result = match holder {
            Some(node) => {
                pass_to_holder(&tx, &id, &text).await.map_err(describe)?;
                crate::queue::passed_to(node)
            }
            None => {
                let state: MessageState = serde_json::from_str(&state)
                    .map_err(|e| format!("{id}: unreadable in the database: {e}"))?;
                apply_unheld(&tx, &id, command, state)
                    .await
                    .map_err(describe)?
            }
        };
        tx.commit().await.map_err(describe)?;
        changed.push(Changed { id, result });
    }
    Ok(changed)
}

/// Locks `id`'s row for the transaction: the node that holds it while its
/// lease lasts (None when no live node does) and its state as JSON; None
/// when the message is gone.
pub async fn lock_message(
    tx: &tokio_postgres::Transaction<'_>,
    id: &QueueId,
) -> Result<Option<(Option<i32>, String)>, tokio_postgres::Error> {
    let row = tx
        .query_opt(
            &format!(
                "SELECT CASE WHEN lease_until >= {NOW} THEN owner END, state
                   FROM portcullis_message WHERE id = $1 FOR UPDATE"
            ),
            &[&id.as_str()],
        )
        .await?;
    Ok(row.map(|row| (row.get(0), row.get(1))))
}

/// Leaves `command` (its JSON) for the node holding `id`, which applies it
/// at its next claim round (see `QueueStore::take_commands`).
pub async fn pass_to_holder(
    tx: &tokio_postgres::Transaction<'_>,
    id: &QueueId,
    command: &str,
) -> Result<(), tokio_postgres::Error> {
    tx.execute(
        "INSERT INTO portcullis_command (message_id, command) VALUES ($1, $2)",
        &[&id.as_str(), &command],
    )
    .await
    .map(|_| ())
}

/// `command` on a message no live node holds, in the database.
async fn apply_unheld(
    tx: &tokio_postgres::Transaction<'_>,
    id: &QueueId,
    command: &QueueCommand,
    mut state: MessageState,
) -> Result<String, tokio_postgres::Error> {
    let result = match command {
        QueueCommand::Delete { .. } => {
            tx.execute(
                "DELETE FROM portcullis_message WHERE id = $1",
                &[&id.as_str()],
            )
            .await?;
            return Ok("deleted".into());
        }
        QueueCommand::Hold { .. } => {
            state.held = true;
            "held"
        }
        QueueCommand::Release { .. } => {
            state.held = false;
            "released"
        }
        _ => {
            state.make_due(crate::clock::unix_now());
            if state.held {
                "due now, but held: release it to deliver"
            } else {
                "due now"
            }
        }
    };
    let json = serde_json::to_string(&state).unwrap_or_default();
    tx.execute(
        "UPDATE portcullis_message SET state = $2, held = $3, next_due = $4, fence = fence + 1
          WHERE id = $1",
        &[&id.as_str(), &json, &state.held, &state.next_due()],
    )
    .await?;
    Ok(result.into())
}

/// The ids `select` names among every message but `except`'s. An id that
/// is not in the queue at all is an error.
async fn selected(
    client: &tokio_postgres::Client,
    select: &Selector,
    except: Option<i32>,
) -> Result<Vec<QueueId>, tokio_postgres::Error> {
    let rows = match select {
        Selector::Id(id) => {
            client
                .query(
                    "SELECT id, envelope FROM portcullis_message
                      WHERE id = $1 AND ($2::int4 IS NULL OR owner IS DISTINCT FROM $2)",
                    &[&id.as_str(), &except],
                )
                .await?
        }
        Selector::All | Selector::Source(_) => {
            client
                .query(
                    "SELECT id, envelope FROM portcullis_message
                      WHERE $1::int4 IS NULL OR owner IS DISTINCT FROM $1
                      ORDER BY id LIMIT $2",
                    &[&except, &LIST_MAX],
                )
                .await?
        }
    };
    Ok(rows
        .iter()
        .filter(|row| match select {
            Selector::Source(source) => {
                serde_json::from_str::<Envelope>(row.get(1)).is_ok_and(|e| e.came_from(source))
            }
            _ => true,
        })
        .filter_map(|row| QueueId::parse(row.get::<_, &str>(0)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::header_section;

    #[test]
    fn the_header_section_ends_at_the_first_empty_line() {
        assert_eq!(
            header_section(b"Subject: a\r\nFrom: b\r\n\r\nbody\r\n\r\nmore"),
            "Subject: a\r\nFrom: b\r\n"
        );
        assert_eq!(header_section(b"Subject: a\n\nbody"), "Subject: a\n");
        assert_eq!(header_section(b"Subject: only"), "Subject: only");
    }
}
