use oversync_diesel::SyncTable;

struct NoteId(String);

#[derive(SyncTable)]
#[diesel(table_name = notes)]
struct Note {
    #[sync(key)]
    id: NoteId,
}

fn main() {}
