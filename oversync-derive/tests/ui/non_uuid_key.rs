use oversync_diesel::SyncTable;

#[derive(SyncTable)]
#[diesel(table_name = notes)]
struct Note {
    #[sync(key)]
    id: f64,
    title: String,
}

#[derive(SyncTable)]
#[diesel(table_name = tags)]
struct Tag {
    #[sync(key)]
    id: [u8; 8],
}

fn main() {}
