use oversync_diesel::SyncTable;

#[derive(SyncTable)]
#[diesel(table_name = notes)]
struct Note {
    id: String,
    title: String,
}

fn main() {}
