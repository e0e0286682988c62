use oversync_diesel::SyncTable;

#[derive(SyncTable)]
#[diesel(table_name = notes)]
struct Note {
    #[sync(key)]
    id: i64,
    title: String,
}

fn main() {}
