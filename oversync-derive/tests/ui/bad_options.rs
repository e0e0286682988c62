use oversync_diesel::SyncTable;

#[derive(SyncTable)]
#[diesel(table_name = notes)]
struct Note {
    #[sync(key, primary)]
    id: String,
}

#[derive(SyncTable)]
#[diesel(table_name = tags)]
struct Tag {
    #[sync(key = id)]
    id: String,
}

#[derive(SyncTable)]
#[diesel(table_name = _sync_notes)]
struct Reserved {
    #[sync(key)]
    id: String,
}

fn main() {}
