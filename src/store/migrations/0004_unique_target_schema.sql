-- owsync 0004: a mirror schema belongs to exactly one ClientSync, whichever cluster owns it
-- (two hosts' tenants of the same name both default to client_<name>). A unique index sees
-- every row, whatever row-level security hides from the caller. Deleted specs keep their
-- schema (their mirror is kept), so only re-applying the same cluster/name reuses it.
CREATE UNIQUE INDEX client_specs_target_schema
    ON sync_metadata.client_specs ((spec #>> '{target,schema}'));
