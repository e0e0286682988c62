use oversync_diesel::SyncTable;

#[derive(SyncTable)]
#[diesel(table_name = notes)]
struct Note {
    #[sync(key)]
    id: Option<String>,
    title: String,
}

fn main() {}
