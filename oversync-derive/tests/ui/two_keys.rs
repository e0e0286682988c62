use oversync_diesel::SyncTable;

#[derive(SyncTable)]
#[diesel(table_name = notes)]
struct Note {
    #[sync(key)]
    id: String,
    #[sync(key)]
    other_id: String,
}

fn main() {}
