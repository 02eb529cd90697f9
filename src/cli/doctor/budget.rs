//! The connection budget on this server: its `max_connections`, the sessions in use
//! (owsyncd's counted apart, by their `application_name` `owsyncd/...`), and how many
//! host pairs of owsyncd's default budget fit (`controller::budget`).

use sqlx::PgConnection;

use super::Report;
use crate::controller::budget::{DEFAULT_MAX_CONNECTIONS, PAIR_IDLE, PAIR_PEAK, pairs_that_fit};

const CHECK: &str = "connections";

struct Figures {
    max_connections: i64,
    reserved: i64,
    in_use: i64,
    owsyncd: i64,
}

pub async fn connections(r: &mut Report, conn: &mut PgConnection) {
    let figures: Result<(i64, i64, i64, i64), _> = sqlx::query_as(
        "SELECT current_setting('max_connections')::bigint AS max_connections,
                current_setting('superuser_reserved_connections')::bigint
                  + coalesce(nullif(current_setting('reserved_connections', true), ''), '0')::bigint AS reserved,
                count(*) FILTER (WHERE backend_type = 'client backend') AS in_use,
                count(*) FILTER (WHERE backend_type = 'client backend' AND application_name LIKE 'owsyncd/%') AS owsyncd
         FROM pg_stat_activity",
    )
    .fetch_one(&mut *conn)
    .await;
    let f = match figures {
        Ok((max_connections, reserved, in_use, owsyncd)) => Figures { max_connections, reserved, in_use, owsyncd },
        Err(e) => return r.warn(CHECK, format!("cannot read max_connections and pg_stat_activity: {e}")),
    };
    // This check's own session is not one a host would hold.
    let others = (f.in_use - f.owsyncd - 1).max(0);
    let fit = pairs_that_fit(f.max_connections, f.reserved, others);
    let more = pairs_that_fit(f.max_connections, f.reserved, f.in_use - 1);
    let msg = format!(
        "max_connections {} ({} reserved); {} sessions in use, {} of them owsyncd's; host pairs of the default budget \
         (--max-connections {DEFAULT_MAX_CONNECTIONS}: {PAIR_PEAK} sessions a pair at peak, {PAIR_IDLE} idle): {fit} fit \
         beside the other sessions, {more} more fit now",
        f.max_connections, f.reserved, f.in_use, f.owsyncd
    );
    if more == 0 {
        r.warn(CHECK, format!("{msg}: no room for another host pair at peak"));
    } else {
        r.ok(CHECK, msg);
    }
}
