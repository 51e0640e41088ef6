-- The thread list's order (deadline first, then the most recently
-- updated), so that its first page reads a page of rows, not every thread.
CREATE INDEX threads_by_deadline ON threads ((due_at IS NULL), due_at, updated_at DESC, id);
