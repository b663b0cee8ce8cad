/*
 * imagegw.pipeline.native._flat: the exact OCI merge of compact layer indexes and the
 * canonical tar writer, in C (issue 21: the per-member path without Python objects).
 *
 * The Python reference is pipeline/flatten.py (merge_layers, _collect, write_flat_tar)
 * and pipeline/tarstream.py (_header); each function here names the one it mirrors, and
 * tests/unit/test_native_flat.py checks that both give the same bytes and the same
 * refusals. The input format is pipeline/compact.py's.
 *
 * Memory: nodes live in one array (48 bytes each; a file's node is also its FileData),
 * found by a hash table keyed by (parent, name); names, symlink targets and member paths
 * are not copied: they point into the compact index bytes, which the tree keeps alive
 * (the indexes are its name arena). No Python object per node; cost linear in layers and
 * members (each member resolves its parent once, through the hash table). The hash table
 * is kept for the one pass's verify (it resolves the paths written in it, so the one
 * pass's own path table is freed before this tree is built) and freed by it and by
 * write(); a link group is one int, and write() sorts a copy of the groups: the one
 * pass's verify holds no copy beside tar2sqfs (issue 21).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "onepass.h"
#include "tarout.h"

enum { K_FILE = 0, K_DIR = 1, K_SYMLINK = 2, K_HARDLINK = 3 };
enum { M_WHITEOUT = 0, M_OPAQUE = 1 };

#define MAX_SYMLINK_HOPS 40
#define IMPLICIT_DIR_MODE 0755
#define NONE (-1)
#define ROOT 0
#define BLOCK TAR_BLOCK
#define READ_CHUNK (1 << 20)
#define PROGRESS_STEP (1 << 20)

static const char HOSTILE_HINT[] = "the layer is hostile or corrupt; this image cannot be converted";
static const unsigned char MAGIC[8] = {'I', 'G', 'W', 'I', 'D', 'X', '2', 0};

static PyObject *ContentRejected; /* imagegw.domain.errors.ContentRejected */

/* flatten.Node: one entry of the merged tree (48 bytes). A file node made from a member
   also stands for flatten.FileData, its bytes: the names of a link group point at it
   (`data`), and it keeps them even once its own name is replaced or removed. Its data's
   offset, size and mtime, and a symlink's target and mtime, are read from the member's
   entry in the index (`entry`), not copied into the node (issue 21: the tree is at the
   verify's peak). */
typedef struct {
	const char *name; /* into the index bytes */
	int32_t parent, next_sibling, prev_sibling, hash_next;
	union {
		struct {
			int32_t data;      /* files: the node holding their data (FileData) */
			int32_t next_name; /* _collect: the next name of the same data */
		};
		int64_t dir_mtime; /* directories (files and symlinks: mtime_of, from the entry) */
	};
	uint16_t name_len;
	uint16_t mode : 12;   /* permission bits (members.py keeps 0o7777 at most) */
	uint16_t kind : 2;    /* K_FILE, K_DIR or K_SYMLINK */
	uint16_t in_hash : 1; /* found by child_of (not removed) */
	uint16_t member_prefix; /* data: the member's path is name - member_prefix */
	uint16_t layer;         /* data: the layer holding it (merge() takes 65535 at most) */
	union {
		int32_t first_child;  /* directories */
		const uint8_t *entry; /* data and symlinks: the member's entry (compact.py) */
	} u;
} Node;

/* The merge's peak is a node per path: the one pass's verify holds them beside tar2sqfs. */
_Static_assert(sizeof(Node) == 48, "a node is 48 bytes");

/* A little-endian unsigned field of `bytes` bytes (the header of compact.py's layout;
   an entry's fields are read by entry_fields, onepass.h). */
static uint64_t le(const unsigned char *p, int bytes)
{
	uint64_t value = 0;
	for (int i = bytes - 1; i >= 0; i--)
		value = value << 8 | p[i];
	return value;
}

/* The numeric fields of a node's entry (data and symlinks). */
static EntryFields fields_of(const Node *n)
{
	EntryFields f;
	entry_fields(n->u.entry, &f);
	return f;
}

static int64_t entry_offset(const uint8_t *entry)
{
	EntryFields f;
	entry_fields(entry, &f);
	return f.offset;
}

/* The data of a file node made from a member: where it is in the layer, and its size. */
static int64_t data_offset(const Node *d) { return entry_offset(d->u.entry); }
static uint64_t data_size(const Node *d) { return fields_of(d).size; }

/* A node's mtime: a directory's own; a symlink's, and a file's data's, from its entry. */
static int64_t mtime_of(const Node *nodes, const Node *n)
{
	if (n->kind == K_DIR)
		return n->dir_mtime;
	if (n->kind == K_FILE)
		n = &nodes[n->data];
	return fields_of(n).mtime;
}

/* A symlink's target (its entry's link). */
static Str link_of(const Node *n)
{
	return (Str){(const char *)entry_link(n->u.entry), entry_link_len(n->u.entry)};
}

/* A link group of _collect: a FileData and its surviving names, in order. Its first
   name's `data` is the FileData, and the other names follow `next_name` (4 bytes a file:
   the one pass's verify holds the groups beside tar2sqfs, issue 21). */
typedef struct {
	int32_t first_name;
} Group;

typedef struct {
	PyObject_HEAD
	PyObject *indexes; /* tuple of bytes: every Str points into them */
	PyObject *layers;  /* tuple of str: the layer names */
	Node *nodes;
	int32_t node_count, node_cap;
	int32_t *buckets;
	uint32_t bucket_mask;
	/* _collect's result: node ids (directories, symlinks) and link groups (files) */
	int32_t *dirs, *symlinks;
	Group *groups; /* in _collect's order (FlatTree.files) */
	int32_t dir_count, symlink_count, group_count;
	uint64_t dropped, data_bytes, hardlinks;
} Tree;

/* -- small helpers -------------------------------------------------------------- */

static int grow(void **array, int32_t *cap, int32_t need, size_t item)
{
	if (need <= *cap)
		return 0;
	int64_t cap2 = *cap ? *cap : 1024;
	while (cap2 < need)
		cap2 *= 2;
	if (cap2 > INT32_MAX) {
		PyErr_NoMemory();
		return -1;
	}
	void *bigger = PyMem_RawRealloc(*array, (size_t)cap2 * item);
	if (bigger == NULL) {
		PyErr_NoMemory();
		return -1;
	}
	*array = bigger;
	*cap = (int32_t)cap2;
	return 0;
}

static int str_eq(Str a, const char *text)
{
	size_t n = strlen(text);
	return a.len == n && memcmp(a.ptr, text, n) == 0;
}

static Str name_of(const Node *n)
{
	return (Str){n->name, n->name_len};
}

static PyObject *text(Str s)
{
	return PyUnicode_DecodeUTF8(s.ptr, s.len, "surrogateescape");
}

/* Raises ContentRejected(message, hint=hint); steals `message`. */
static void raise_rejected(PyObject *message, const char *hint)
{
	if (message == NULL)
		return;
	PyObject *args = PyTuple_Pack(1, message);
	PyObject *kwargs = Py_BuildValue("{s:s}", "hint", hint);
	Py_DECREF(message);
	if (args != NULL && kwargs != NULL) {
		PyObject *error = PyObject_Call(ContentRejected, args, kwargs);
		if (error != NULL) {
			PyErr_SetObject(ContentRejected, error);
			Py_DECREF(error);
		}
	}
	Py_XDECREF(args);
	Py_XDECREF(kwargs);
}

/* _LayerMerge._reject: "layer L: member 'm' <problem>" (problem may hold one %R of `arg`). */
static void reject_member(PyObject *layer, Str member, const char *problem, Str *arg)
{
	PyObject *name = text(member);
	PyObject *what = NULL;
	if (name == NULL)
		return;
	if (arg != NULL) {
		PyObject *value = text(*arg);
		if (value != NULL)
			what = PyUnicode_FromFormat(problem, value);
		Py_XDECREF(value);
	} else {
		what = PyUnicode_FromString(problem);
	}
	if (what != NULL)
		raise_rejected(PyUnicode_FromFormat("layer %U: member %R %U", layer, name, what),
			       HOSTILE_HINT);
	Py_DECREF(name);
	Py_XDECREF(what);
}

/* -- the compact index (compact.py's layout) ------------------------------------ */

typedef struct {
	const unsigned char *at, *end;
} Cursor;

static const unsigned char *take(Cursor *c, uint64_t count)
{
	if ((uint64_t)(c->end - c->at) < count)
		return NULL;
	const unsigned char *start = c->at;
	c->at += count;
	return start;
}

typedef struct {
	uint8_t kind;
	uint32_t mode;
	int64_t mtime;
	uint64_t size, ordinal;
	int64_t offset;
	Str path, link;
} IndexEntry;

typedef struct {
	uint32_t entries, markers;
	uint64_t dropped;
	Str layer;
	Cursor entry_list, marker_list; /* where each part starts */
} IndexHeader;

static int damaged(const char *what)
{
	PyErr_Format(PyExc_ValueError, "a damaged compact layer index: %s", what);
	return -1;
}

/* A LEB128 varint inside the index: at most VARINT_MAX bytes, its value within 64 bits
   (what entry_fields reads afterwards without checking). -1 when it is not. */
static int take_varint(Cursor *c, uint64_t *value)
{
	uint64_t v = 0;
	for (int i = 0; i < VARINT_MAX && c->at < c->end; i++) {
		unsigned char b = *c->at++;
		if (i == VARINT_MAX - 1 && b > 1)
			return -1;
		v |= (uint64_t)(b & 0x7f) << (7 * i);
		if (!(b & 0x80)) {
			*value = v;
			return 0;
		}
	}
	return -1;
}

/* One entry: u8 kind, u16 path length, u16 link length, path, link, then varints:
   mode, zigzag mtime, size, ordinal, offset + 1 (onepass.h). */
static int next_entry(Cursor *c, IndexEntry *e)
{
	const unsigned char *p = take(c, ENTRY_HEAD);
	if (p == NULL)
		return damaged("an entry is cut short");
	e->kind = p[0];
	e->path.len = entry_path_len(p);
	e->link.len = entry_link_len(p);
	e->path.ptr = (const char *)take(c, e->path.len);
	e->link.ptr = (const char *)take(c, e->link.len);
	if (e->path.ptr == NULL || e->link.ptr == NULL)
		return damaged("an entry's path is cut short");
	uint64_t mode, mtime, offset;
	if (take_varint(c, &mode) < 0 || take_varint(c, &mtime) < 0 ||
	    take_varint(c, &e->size) < 0 || take_varint(c, &e->ordinal) < 0 ||
	    take_varint(c, &offset) < 0)
		return damaged("an entry's numbers are cut short or too long");
	if (e->kind > K_HARDLINK || e->path.len == 0)
		return damaged("an entry of unknown kind, or without a path");
	if (mode > 07777) /* members.sanitize_mode */
		return damaged("an entry's mode has more than permission bits");
	if (offset > (uint64_t)INT64_MAX + 1)
		return damaged("an entry's data offset is out of range");
	EntryFields f;
	entry_fields(p, &f); /* the same numbers, as every later reader decodes them */
	e->mode = f.mode;
	e->mtime = f.mtime;
	e->offset = f.offset;
	return 0;
}

/* One marker: u8 kind, u32 path length, path. */
static int next_marker(Cursor *c, uint8_t *kind, Str *path)
{
	const unsigned char *p = take(c, 5);
	if (p == NULL)
		return damaged("a marker is cut short");
	*kind = p[0];
	path->len = (uint32_t)le(p + 1, 4);
	path->ptr = (const char *)take(c, path->len);
	if (path->ptr == NULL || *kind > M_OPAQUE)
		return damaged("a marker is cut short, or of unknown kind");
	return 0;
}

/* Header: magic, u32 entries, u32 markers, u64 dropped, u32 name length, name;
   the whole index is walked once to find where the markers start. */
static int read_header(PyObject *bytes, IndexHeader *h)
{
	if (!PyBytes_Check(bytes)) {
		PyErr_SetString(PyExc_TypeError, "a compact layer index must be bytes");
		return -1;
	}
	Cursor c = {(const unsigned char *)PyBytes_AS_STRING(bytes), NULL};
	c.end = c.at + PyBytes_GET_SIZE(bytes);
	const unsigned char *p = take(&c, 28);
	if (p == NULL || memcmp(p, MAGIC, 8) != 0) {
		PyErr_SetString(PyExc_ValueError, "not a compact layer index");
		return -1;
	}
	h->entries = (uint32_t)le(p + 8, 4);
	h->markers = (uint32_t)le(p + 12, 4);
	h->dropped = le(p + 16, 8);
	h->layer.len = (uint32_t)le(p + 24, 4);
	h->layer.ptr = (const char *)take(&c, h->layer.len);
	if (h->layer.ptr == NULL)
		return damaged("the layer name is cut short");
	h->entry_list = c;
	IndexEntry e;
	for (uint32_t i = 0; i < h->entries; i++)
		if (next_entry(&c, &e) < 0)
			return -1;
	h->marker_list = c;
	uint8_t kind;
	Str path;
	for (uint32_t i = 0; i < h->markers; i++)
		if (next_marker(&c, &kind, &path) < 0)
			return -1;
	if (c.at != c.end)
		return damaged("trailing bytes");
	return 0;
}

/* -- nodes and the (parent, name) hash table ------------------------------------ */

static uint32_t name_hash(int32_t parent, Str name)
{
	uint64_t h = 1469598103934665603ULL ^ (uint64_t)(uint32_t)parent * 0x9E3779B97F4A7C15ULL;
	for (uint32_t i = 0; i < name.len; i++)
		h = (h ^ (unsigned char)name.ptr[i]) * 1099511628211ULL;
	return (uint32_t)(h ^ h >> 32);
}

static int rehash(Tree *t, uint32_t buckets)
{
	int32_t *table = PyMem_RawMalloc((size_t)buckets * sizeof(int32_t));
	if (table == NULL) {
		PyErr_NoMemory();
		return -1;
	}
	for (uint32_t i = 0; i < buckets; i++)
		table[i] = NONE;
	for (int32_t id = 0; id < t->node_count; id++) {
		Node *n = &t->nodes[id];
		if (!n->in_hash)
			continue;
		uint32_t b = name_hash(n->parent, name_of(n)) & (buckets - 1);
		n->hash_next = table[b];
		table[b] = id;
	}
	PyMem_RawFree(t->buckets);
	t->buckets = table;
	t->bucket_mask = buckets - 1;
	return 0;
}

/* directory.children.get(name) */
static int32_t child_of(Tree *t, int32_t parent, Str name)
{
	int32_t id = t->buckets[name_hash(parent, name) & t->bucket_mask];
	while (id != NONE) {
		Node *n = &t->nodes[id];
		if (n->parent == parent && n->name_len == name.len &&
		    memcmp(n->name, name.ptr, name.len) == 0)
			return id;
		id = n->hash_next;
	}
	return NONE;
}

/* A new node, detached; NONE with an exception set when out of memory. `mtime` is a
   directory's (a file's or symlink's is read from its entry: mtime_of). */
static int32_t new_node(Tree *t, uint8_t kind, uint32_t mode, int64_t mtime, Str name)
{
	if (name.len > UINT16_MAX) {
		PyErr_SetString(PyExc_ValueError, "a path component longer than 65535 bytes");
		return NONE;
	}
	if (grow((void **)&t->nodes, &t->node_cap, t->node_count + 1, sizeof(Node)) < 0)
		return NONE;
	if ((uint32_t)t->node_count > t->bucket_mask &&
	    rehash(t, (t->bucket_mask + 1) * 2) < 0)
		return NONE;
	int32_t id = t->node_count++;
	Node *n = &t->nodes[id];
	memset(n, 0, sizeof(*n));
	n->kind = kind;
	n->mode = (uint16_t)mode;
	n->name = name.ptr;
	n->name_len = (uint16_t)name.len;
	n->parent = n->next_sibling = n->prev_sibling = NONE;
	n->hash_next = n->data = n->next_name = NONE;
	if (kind == K_DIR) {
		n->u.first_child = NONE;
		n->dir_mtime = mtime;
	}
	return id;
}

/* del directory.children[name] (the node and its subtree become unreachable) */
static void unlink_child(Tree *t, int32_t id)
{
	Node *n = &t->nodes[id];
	int32_t *slot = &t->buckets[name_hash(n->parent, name_of(n)) & t->bucket_mask];
	while (*slot != id)
		slot = &t->nodes[*slot].hash_next;
	*slot = n->hash_next;
	n->in_hash = 0;
	if (n->prev_sibling != NONE)
		t->nodes[n->prev_sibling].next_sibling = n->next_sibling;
	else
		t->nodes[n->parent].u.first_child = n->next_sibling;
	if (n->next_sibling != NONE)
		t->nodes[n->next_sibling].prev_sibling = n->prev_sibling;
}

/* directory.children[name] = node (replacing whatever had that name) */
static void set_child(Tree *t, int32_t parent, int32_t id)
{
	Node *n = &t->nodes[id];
	int32_t old = child_of(t, parent, name_of(n));
	if (old != NONE)
		unlink_child(t, old);
	n->parent = parent;
	uint32_t b = name_hash(parent, name_of(n)) & t->bucket_mask;
	n->hash_next = t->buckets[b];
	t->buckets[b] = id;
	n->in_hash = 1;
	n->prev_sibling = NONE;
	n->next_sibling = t->nodes[parent].u.first_child;
	if (n->next_sibling != NONE)
		t->nodes[n->next_sibling].prev_sibling = id;
	t->nodes[parent].u.first_child = id;
}

/* directory.children.clear() (an opaque marker) */
static void clear_children(Tree *t, int32_t dir)
{
	while (t->nodes[dir].u.first_child != NONE)
		unlink_child(t, t->nodes[dir].u.first_child);
}

/* -- the merge (flatten._LayerMerge) -------------------------------------------- */

typedef struct {
	Tree *t;
	int32_t number;
	PyObject *layer; /* its name, for messages */
	Str *pending;    /* _resolve_dir's components still to walk, last first */
	int32_t pending_count, pending_cap;
	int32_t *stack; /* _resolve_dir's directories walked */
	int32_t stack_count, stack_cap;
} Merge;

/* pending.extend(path.split("/")[::-1]) ("" and "." are skipped here, not later) */
static int push_components(Merge *m, Str path)
{
	uint32_t end = path.len;
	while (end > 0) {
		uint32_t start = end;
		while (start > 0 && path.ptr[start - 1] != '/')
			start--;
		Str part = {path.ptr + start, end - start};
		if (part.len > 0 && !str_eq(part, ".")) {
			if (grow((void **)&m->pending, &m->pending_cap, m->pending_count + 1,
				 sizeof(Str)) < 0)
				return -1;
			m->pending[m->pending_count++] = part;
		}
		end = start > 0 ? start - 1 : 0;
	}
	return 0;
}

/* _LayerMerge._resolve_dir: the directory at `path`, following symlinks confined to
   the root ('..' stops at the root, absolute targets restart there). Sets *found to
   NONE when it is missing (or not a directory) and not `create`; -1 on a refusal. */
static int resolve_dir(Merge *m, Str path, Str member, int create, int32_t *found)
{
	Tree *t = m->t;
	int hops = 0;
	m->pending_count = 0;
	m->stack_count = 1;
	m->stack[0] = ROOT;
	if (push_components(m, path) < 0)
		return -1;
	while (m->pending_count > 0) {
		Str part = m->pending[--m->pending_count];
		if (str_eq(part, "..")) {
			if (m->stack_count > 1)
				m->stack_count--;
			continue;
		}
		int32_t top = m->stack[m->stack_count - 1];
		int32_t child = child_of(t, top, part);
		if (child == NONE) {
			if (!create) {
				*found = NONE;
				return 0;
			}
			child = new_node(t, K_DIR, IMPLICIT_DIR_MODE, 0, part);
			if (child == NONE)
				return -1;
			set_child(t, top, child);
		} else if (t->nodes[child].kind == K_SYMLINK) {
			if (++hops > MAX_SYMLINK_HOPS) {
				/* the number is MAX_SYMLINK_HOPS (flatten.py's) */
				reject_member(m->layer, member, "lies below more than 40 symlinks "
					      "(a symlink loop)", NULL);
				return -1;
			}
			Str link = link_of(&t->nodes[child]);
			if (link.len > 0 && link.ptr[0] == '/')
				m->stack_count = 1;
			if (push_components(m, link) < 0)
				return -1;
			continue;
		} else if (t->nodes[child].kind != K_DIR) {
			if (!create) {
				*found = NONE;
				return 0;
			}
			reject_member(m->layer, member, "lies below %R, which is not a directory", &part);
			return -1;
		}
		if (grow((void **)&m->stack, &m->stack_cap, m->stack_count + 1, sizeof(int32_t)) < 0)
			return -1;
		m->stack[m->stack_count++] = child;
	}
	*found = m->stack[m->stack_count - 1];
	return 0;
}

/* path.rpartition("/"): the parent path and the last name */
static void split_last(Str path, Str *parent, Str *name)
{
	uint32_t cut = path.len;
	while (cut > 0 && path.ptr[cut - 1] != '/')
		cut--;
	parent->ptr = path.ptr;
	parent->len = cut > 0 ? cut - 1 : 0;
	name->ptr = path.ptr + cut;
	name->len = path.len - cut;
}

/* _LayerMerge.apply_marker */
static int apply_marker(Merge *m, uint8_t kind, Str path)
{
	int32_t dir;
	if (kind == M_OPAQUE) {
		if (resolve_dir(m, path, path, 0, &dir) < 0)
			return -1;
		if (dir != NONE)
			clear_children(m->t, dir);
		return 0;
	}
	Str parent_path, name;
	split_last(path, &parent_path, &name);
	if (resolve_dir(m, parent_path, path, 0, &dir) < 0)
		return -1;
	if (dir != NONE) {
		int32_t child = child_of(m->t, dir, name);
		if (child != NONE)
			unlink_child(m->t, child);
	}
	return 0;
}

/* _LayerMerge._hardlink: a new node for `e`, sharing (or copying) its target's. */
static int32_t hardlink(Merge *m, const IndexEntry *e, Str name)
{
	Tree *t = m->t;
	Str parent_path, target_name;
	int32_t parent, target = NONE;
	split_last(e->link, &parent_path, &target_name);
	if (resolve_dir(m, parent_path, e->link, 0, &parent) < 0)
		return NONE;
	if (parent != NONE)
		target = child_of(t, parent, target_name);
	if (target == NONE) {
		reject_member(m->layer, e->path, "is a hardlink to %R, which does not exist at that "
			      "point (missing, or only later in the layer)", (Str *)&e->link);
		return NONE;
	}
	if (t->nodes[target].kind == K_DIR) {
		reject_member(m->layer, e->path, "is a hardlink to the directory %R", (Str *)&e->link);
		return NONE;
	}
	Node copy = t->nodes[target];
	if (copy.kind == K_SYMLINK) {
		int32_t id = new_node(t, K_SYMLINK, 0777, 0, name);
		if (id != NONE)
			t->nodes[id].u.entry = copy.u.entry;
		return id;
	}
	int32_t id = new_node(t, K_FILE, copy.mode, 0, name);
	if (id != NONE)
		t->nodes[id].data = copy.data;
	return id;
}

/* _LayerMerge.apply_entry */
static int apply_entry(Merge *m, const IndexEntry *e)
{
	Tree *t = m->t;
	Str parent_path, name;
	int32_t parent, id;
	split_last(e->path, &parent_path, &name);
	if (resolve_dir(m, parent_path, e->path, 1, &parent) < 0)
		return -1;
	int32_t existing = child_of(t, parent, name);
	switch (e->kind) {
	case K_DIR:
		if (existing != NONE && t->nodes[existing].kind == K_DIR) {
			t->nodes[existing].mode = e->mode;
			t->nodes[existing].dir_mtime = e->mtime;
			return 0;
		}
		id = new_node(t, K_DIR, e->mode, e->mtime, name);
		break;
	case K_FILE:
		id = new_node(t, K_FILE, e->mode, 0, name);
		if (id != NONE) {
			Node *n = &t->nodes[id];
			n->data = id;
			n->member_prefix = (uint16_t)(e->path.len - name.len);
			n->u.entry = (const uint8_t *)e->path.ptr - ENTRY_HEAD;
			n->layer = m->number;
		}
		break;
	case K_SYMLINK:
		id = new_node(t, K_SYMLINK, 0777, 0, name);
		if (id != NONE)
			t->nodes[id].u.entry = (const uint8_t *)e->path.ptr - ENTRY_HEAD;
		break;
	default:
		id = hardlink(m, e, name);
	}
	if (id == NONE)
		return -1;
	set_child(t, parent, id);
	return 0;
}

/* merge_layers' loop over one layer: every marker, then every entry. */
static int merge_layer(Merge *m, const IndexHeader *h)
{
	Cursor c = h->marker_list;
	for (uint32_t i = 0; i < h->markers; i++) {
		uint8_t kind;
		Str path;
		if (next_marker(&c, &kind, &path) < 0 || apply_marker(m, kind, path) < 0)
			return -1;
	}
	c = h->entry_list;
	for (uint32_t i = 0; i < h->entries; i++) {
		IndexEntry e;
		if (next_entry(&c, &e) < 0 || apply_entry(m, &e) < 0)
			return -1;
	}
	return 0;
}

/* -- _collect: parents first, children sorted as Python sorts str ---------------- */

/* The next code point of UTF-8 decoded with surrogateescape (as Python decodes it):
   a well-formed sequence gives its code point, any other byte b gives U+DC00 + b. */
static uint32_t next_code_point(const unsigned char *s, uint32_t len, uint32_t *at)
{
	uint32_t i = *at;
	unsigned char b = s[i];
	uint32_t need = 0, cp = 0, low = 0x80, high = 0xBF;
	if (b < 0x80) {
		*at = i + 1;
		return b;
	}
	if (b >= 0xC2 && b <= 0xDF) {
		need = 1;
		cp = b & 0x1F;
	} else if (b >= 0xE0 && b <= 0xEF) {
		need = 2;
		cp = b & 0x0F;
		if (b == 0xE0)
			low = 0xA0;
		if (b == 0xED)
			high = 0x9F; /* no encoded surrogates */
	} else if (b >= 0xF0 && b <= 0xF4) {
		need = 3;
		cp = b & 0x07;
		if (b == 0xF0)
			low = 0x90;
		if (b == 0xF4)
			high = 0x8F;
	}
	if (need == 0 || i + need >= len)
		goto escaped;
	for (uint32_t k = 1; k <= need; k++) {
		unsigned char c = s[i + k];
		if (c < low || c > high)
			goto escaped;
		low = 0x80;
		high = 0xBF;
		cp = cp << 6 | (c & 0x3F);
	}
	*at = i + need + 1;
	return cp;
escaped:
	*at = i + 1;
	return 0xDC00 + b;
}

static int compare_names(const void *a, const void *b, void *context)
{
	const Node *nodes = context;
	Str x = name_of(&nodes[*(const int32_t *)a]), y = name_of(&nodes[*(const int32_t *)b]);
	uint32_t i = 0, j = 0;
	while (i < x.len && j < y.len) {
		uint32_t p = next_code_point((const unsigned char *)x.ptr, x.len, &i);
		uint32_t q = next_code_point((const unsigned char *)y.ptr, y.len, &j);
		if (p != q)
			return p < q ? -1 : 1;
	}
	return (i < x.len) - (j < y.len);
}

static int append(int32_t **array, int32_t *count, int32_t *cap, int32_t value)
{
	if (grow((void **)array, cap, *count + 1, sizeof(int32_t)) < 0)
		return -1;
	(*array)[(*count)++] = value;
	return 0;
}

/* flatten._collect */
static int collect(Tree *t)
{
	int32_t *stack = NULL, *children = NULL;
	int32_t stack_count = 0, stack_cap = 0, child_cap = 0;
	int32_t dir_cap = 0, symlink_cap = 0, group_cap = 0;
	int result = -1;
	/* groups.setdefault(id(node.data), ...): the last name of each FileData, once seen */
	int32_t *last_name = PyMem_RawMalloc(((size_t)t->node_count + 1) * sizeof(int32_t));
	if (last_name == NULL) {
		PyErr_NoMemory();
		goto done;
	}
	for (int32_t id = 0; id < t->node_count; id++)
		last_name[id] = NONE;
	/* a group per file at most, reserved at once (as the nodes: no holes left behind) */
	if (grow((void **)&t->groups, &group_cap, t->node_count, sizeof(Group)) < 0 ||
	    append(&stack, &stack_count, &stack_cap, ROOT) < 0)
		goto done;
	while (stack_count > 0) {
		int32_t dir = stack[--stack_count];
		int32_t child_count = 0;
		for (int32_t c = t->nodes[dir].u.first_child; c != NONE; c = t->nodes[c].next_sibling)
			if (append(&children, &child_count, &child_cap, c) < 0)
				goto done;
		if (child_count > 1)
			qsort_r(children, child_count, sizeof(int32_t), compare_names, t->nodes);
		int32_t subdirs = 0;
		for (int32_t k = 0; k < child_count; k++) {
			int32_t id = children[k];
			Node *n = &t->nodes[id];
			if (n->kind == K_DIR) {
				if (append(&t->dirs, &t->dir_count, &dir_cap, id) < 0)
					goto done;
				children[subdirs++] = id; /* k >= subdirs: nothing unread is overwritten */
			} else if (n->kind == K_SYMLINK) {
				if (append(&t->symlinks, &t->symlink_count, &symlink_cap, id) < 0)
					goto done;
			} else if (last_name[n->data] == NONE) {
				if (grow((void **)&t->groups, &group_cap, t->group_count + 1,
					 sizeof(Group)) < 0)
					goto done;
				last_name[n->data] = id;
				t->groups[t->group_count++] = (Group){id};
				t->data_bytes += data_size(&t->nodes[n->data]);
			} else {
				t->nodes[last_name[n->data]].next_name = id;
				last_name[n->data] = id;
				t->hardlinks++;
			}
		}
		while (subdirs > 0) /* stack.extend(reversed(subdirs)) */
			if (append(&stack, &stack_count, &stack_cap, children[--subdirs]) < 0)
				goto done;
	}
	result = 0;
done:
	PyMem_RawFree(last_name);
	PyMem_RawFree(stack);
	PyMem_RawFree(children);
	return result;
}

/* -- merge(indexes) ------------------------------------------------------------- */

static PyTypeObject TreeType;
static int by_layer_and_offset(const void *a, const void *b, void *context);

/* Room for a node per entry and some implicit directories, in one allocation: the
   array doubling from small would leave its old copies in the heap as free holes that
   RSS still counts (glibc serves them below its mmap threshold, which the one pass's
   freed tables raise), at the verify's peak beside tar2sqfs (issue 21). The pages
   are touched only as nodes are made; more nodes than this grow the array as before. */
static int reserve_nodes(Tree *t)
{
	int64_t entries = 1024;
	for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(t->indexes); i++) {
		PyObject *index = PyTuple_GET_ITEM(t->indexes, i);
		if (!PyBytes_Check(index) || PyBytes_GET_SIZE(index) < 28)
			continue; /* read_header says what is wrong */
		int64_t claimed = (int64_t)le((const unsigned char *)PyBytes_AS_STRING(index) + 8, 4);
		int64_t room = PyBytes_GET_SIZE(index) / ENTRY_MIN; /* a damaged count: no more */
		entries += claimed < room ? claimed : room;
	}
	entries += entries / 8;
	return grow((void **)&t->nodes, &t->node_cap,
		    entries > INT32_MAX / 2 ? INT32_MAX / 2 : (int32_t)entries, sizeof(Node));
}

static PyObject *merge(PyObject *module, PyObject *arg)
{
	(void)module;
	Merge m = {0};
	Tree *t = PyObject_New(Tree, &TreeType);
	if (t == NULL)
		return NULL;
	memset((char *)t + sizeof(PyObject), 0, sizeof(Tree) - sizeof(PyObject));
	t->indexes = PySequence_Tuple(arg);
	if (t->indexes == NULL)
		goto fail;
	Py_ssize_t count = PyTuple_GET_SIZE(t->indexes);
	if (count > UINT16_MAX + 1) { /* Node.layer; Limits.max_layers is far below */
		PyErr_SetString(PyExc_ValueError, "more than 65536 layers to merge");
		goto fail;
	}
	t->layers = PyTuple_New(count);
	if (t->layers == NULL || reserve_nodes(t) < 0 || rehash(t, 1024) < 0 ||
	    new_node(t, K_DIR, IMPLICIT_DIR_MODE, 0, (Str){"", 0}) != ROOT)
		goto fail;
	m.t = t;
	if (grow((void **)&m.stack, &m.stack_cap, 64, sizeof(int32_t)) < 0)
		goto fail;
	for (Py_ssize_t i = 0; i < count; i++) {
		IndexHeader h;
		if (read_header(PyTuple_GET_ITEM(t->indexes, i), &h) < 0)
			goto fail;
		PyObject *layer = text(h.layer);
		if (layer == NULL)
			goto fail;
		PyTuple_SET_ITEM(t->layers, i, layer);
		m.number = (int32_t)i;
		m.layer = layer;
		t->dropped += h.dropped;
		if (merge_layer(&m, &h) < 0)
			goto fail;
	}
	if (collect(t) < 0)
		goto fail;
	/* The (parent, name) table stays for the one pass's verify, which resolves the paths
	   written in it (it is part of the merge's peak anyway); write() and the verify free
	   it (issue 21). */
	PyMem_RawFree(m.pending);
	PyMem_RawFree(m.stack);
	return (PyObject *)t;
fail:
	PyMem_RawFree(m.pending);
	PyMem_RawFree(m.stack);
	Py_DECREF(t);
	return NULL;
}

/* -- the canonical tar: tarout.c (shared with the one-pass emitter) ---------- */

/* The path of a node: its names from the root, joined by "/" (into a growing buffer). */
typedef struct {
	char *buf;
	int32_t len, cap;
	int32_t *chain;
	int32_t chain_count, chain_cap;
} PathBuffer;

static int path_of(Tree *t, int32_t id, PathBuffer *p, Str *path)
{
	p->chain_count = 0;
	for (int32_t at = id; at != ROOT; at = t->nodes[at].parent)
		if (append(&p->chain, &p->chain_count, &p->chain_cap, at) < 0)
			return -1;
	p->len = 0;
	while (p->chain_count > 0) {
		Str name = name_of(&t->nodes[p->chain[--p->chain_count]]);
		if (grow((void **)&p->buf, &p->cap, p->len + (int32_t)name.len + 1, 1) < 0)
			return -1;
		if (p->len > 0)
			p->buf[p->len++] = '/';
		memcpy(p->buf + p->len, name.ptr, name.len);
		p->len += (int32_t)name.len;
	}
	*path = (Str){p->buf, (uint32_t)p->len};
	return 0;
}

/* -- file data, copied by offset (write_flat_tar's layer pass) ------------------ */

typedef struct {
	PyObject *stream, *view; /* the decompressed layer, and a memoryview of buf */
	char *buf;
	size_t pos, len;  /* unread bytes: buf[pos:len] */
	uint64_t at;      /* stream offset of buf[pos] */
	PyObject *on_bytes;
	uint64_t unreported;
} Layer;

/* Refills the buffer by stream.readinto; 0 at the end of the stream. */
static int64_t refill(Layer *l)
{
	PyObject *got = PyObject_CallMethod(l->stream, "readinto", "O", l->view);
	if (got == NULL)
		return -1;
	Py_ssize_t n = PyLong_Check(got) ? PyLong_AsSsize_t(got) : -1;
	Py_DECREF(got);
	if (n < 0 || n > READ_CHUNK) {
		if (!PyErr_Occurred())
			PyErr_SetString(PyExc_ValueError, "a layer stream's readinto returned no count");
		return -1;
	}
	l->pos = 0;
	l->len = (size_t)n;
	return n;
}

static int report(Layer *l, uint64_t count, int force)
{
	l->unreported += count;
	if (l->on_bytes == Py_None || l->unreported == 0 ||
	    (!force && l->unreported < PROGRESS_STEP))
		return 0;
	PyObject *done = PyObject_CallFunction(l->on_bytes, "K", (unsigned long long)l->unreported);
	l->unreported = 0;
	Py_XDECREF(done);
	return done == NULL ? -1 : 0;
}

static void truncated(PyObject *layer, const char *message, Str *member, const char *hint)
{
	PyObject *name = member ? text(*member) : NULL;
	if (member && name == NULL)
		return;
	raise_rejected(member ? PyUnicode_FromFormat(message, layer, name)
			      : PyUnicode_FromFormat(message, layer), hint);
	Py_XDECREF(name);
}

/* Skips to the data of `d` (the layer read forward only), then copies it to `o`. */
static int copy_member(Layer *l, PyObject *layer, const Node *d, Out *o)
{
	int64_t offset = data_offset(d);
	Str member = {d->name - d->member_prefix, (uint32_t)d->member_prefix + d->name_len};
	if (offset < 0 || (uint64_t)offset < l->at) {
		PyErr_SetString(PyExc_ValueError, "a compact layer index without data offsets");
		return -1;
	}
	while (l->at < (uint64_t)offset) {
		if (l->pos == l->len) {
			int64_t n = refill(l);
			if (n < 0)
				return -1;
			if (n == 0) {
				truncated(layer, "layer %U ends before member %R", &member,
					  "the layer is truncated; pull the image again");
				return -1;
			}
		}
		uint64_t skip = (uint64_t)offset - l->at, have = l->len - l->pos;
		size_t n = (size_t)(skip < have ? skip : have);
		l->pos += n;
		l->at += n;
	}
	uint64_t size = data_size(d);
	for (uint64_t left = size; left > 0;) {
		if (l->pos == l->len) {
			int64_t n = refill(l);
			if (n < 0)
				return -1;
			if (n == 0) {
				truncated(layer, "layer %U ends in the middle of a tar member", NULL,
					  "the layer is truncated or corrupt");
				return -1;
			}
		}
		uint64_t have = l->len - l->pos;
		size_t n = (size_t)(left < have ? left : have);
		if (out_put(o, l->buf + l->pos, n) < 0 || report(l, n, 0) < 0)
			return -1;
		l->pos += n;
		l->at += n;
		left -= n;
	}
	return out_zeros(o, (BLOCK - size % BLOCK) % BLOCK);
}

/* The node holding a group's data (FileData). */
static const Node *data_of(const Tree *t, const Group *g)
{
	return &t->nodes[t->nodes[g->first_name].data];
}

/* A file's header and data, then a hardlink header for each other name (_write_layer_files). */
static int write_group(Tree *t, Layer *l, const Group *g, Out *o, PathBuffer *p)
{
	Str first, other;
	const Node *d = data_of(t, g);
	if (path_of(t, g->first_name, p, &first) < 0 ||
	    put_header(o, first, '0', d->mode, mtime_of(t->nodes, d), data_size(d), (Str){"", 0}) < 0 ||
	    copy_member(l, PyTuple_GET_ITEM(t->layers, d->layer), d, o) < 0)
		return -1;
	if (t->nodes[g->first_name].next_name == NONE)
		return 0;
	/* the first name is kept aside: path_of reuses the buffer */
	char *kept = PyMem_RawMalloc(first.len + 1);
	if (kept == NULL) {
		PyErr_NoMemory();
		return -1;
	}
	memcpy(kept, first.ptr, first.len);
	Str target = {kept, first.len};
	int result = 0;
	for (int32_t id = t->nodes[g->first_name].next_name; id != NONE && result == 0;
	     id = t->nodes[id].next_name)
		result = path_of(t, id, p, &other) < 0 ? -1
			 : put_header(o, other, '1', d->mode, mtime_of(t->nodes, d), 0, target);
	PyMem_RawFree(kept);
	return result;
}

/* write_flat_tar's order: by layer, then by member (offsets grow with the ordinal, and
   so do the entries' places in the index: compared without reading them). */
static int by_layer_and_offset(const void *a, const void *b, void *context)
{
	const Tree *t = context;
	const Node *x = data_of(t, a), *y = data_of(t, b);
	if (x->layer != y->layer)
		return x->layer < y->layer ? -1 : 1;
	return x->u.entry < y->u.entry ? -1 : x->u.entry > y->u.entry;
}

static int32_t layer_of(const Tree *t, const Group *g)
{
	return data_of(t, g)->layer;
}

/* The exception being raised, kept aside while the layer stream is closed (PyErr_Fetch
   is deprecated from Python 3.12 on, and -Werror would refuse it). */
#if PY_VERSION_HEX >= 0x030C0000
typedef PyObject *SavedError;
static SavedError save_error(void)
{
	return PyErr_GetRaisedException();
}
static void restore_error(SavedError error)
{
	if (error != NULL) {
		PyErr_Clear();
		PyErr_SetRaisedException(error);
	}
}
#else
typedef struct {
	PyObject *type, *value, *traceback;
} SavedError;
static SavedError save_error(void)
{
	SavedError error;
	PyErr_Fetch(&error.type, &error.value, &error.traceback);
	return error;
}
static void restore_error(SavedError error)
{
	if (error.type != NULL) {
		PyErr_Clear();
		PyErr_Restore(error.type, error.value, error.traceback);
	}
}
#endif

/* Every file of layer `number`, from the stream open_layer(number) gives (closed after). */
static int write_layer(Tree *t, PyObject *open_layer, int32_t number, const Group *order,
		       int32_t count, Layer *l, Out *o, PathBuffer *p)
{
	l->stream = PyObject_CallFunction(open_layer, "i", number);
	if (l->stream == NULL)
		return -1;
	l->pos = l->len = 0;
	l->at = 0;
	int result = 0;
	for (int32_t k = 0; k < count && result == 0; k++)
		result = write_group(t, l, &order[k], o, p);
	/* contextlib.closing: closed whatever happened; the first error is the one reported */
	SavedError first = save_error();
	PyObject *closed = PyObject_CallMethod(l->stream, "close", NULL);
	if (closed == NULL && result == 0)
		result = -1;
	restore_error(first);
	Py_XDECREF(closed);
	Py_CLEAR(l->stream);
	return result;
}

/* Directories, symlinks, then the files layer by layer; two zero blocks (write_flat_tar). */
static int write_tar(Tree *t, PyObject *open_layer, Out *o, Layer *l, PathBuffer *p)
{
	Str path;
	for (int32_t k = 0; k < t->dir_count; k++) {
		Node *n = &t->nodes[t->dirs[k]];
		if (path_of(t, t->dirs[k], p, &path) < 0 ||
		    put_header(o, path, '5', n->mode, n->dir_mtime, 0, (Str){"", 0}) < 0)
			return -1;
	}
	for (int32_t k = 0; k < t->symlink_count; k++) {
		Node *n = &t->nodes[t->symlinks[k]];
		if (path_of(t, t->symlinks[k], p, &path) < 0 ||
		    put_header(o, path, '2', 0777, mtime_of(t->nodes, n), 0,
			       link_of(n)) < 0)
			return -1;
	}
	/* By layer and member: a sorted copy, made here, not in merge() (the one pass's verify
	   reads the groups in _collect's order, and holds no copy beside tar2sqfs). */
	Group *order = PyMem_RawMalloc(((size_t)t->group_count + 1) * sizeof(Group));
	if (order == NULL) {
		PyErr_NoMemory();
		return -1;
	}
	if (t->group_count > 0)
		memcpy(order, t->groups, (size_t)t->group_count * sizeof(Group));
	if (t->group_count > 1)
		qsort_r(order, t->group_count, sizeof(Group), by_layer_and_offset, t);
	int result = 0;
	for (int32_t start = 0, end; start < t->group_count && result == 0; start = end) {
		int32_t number = layer_of(t, &order[start]);
		for (end = start; end < t->group_count && layer_of(t, &order[end]) == number; end++)
			;
		result = write_layer(t, open_layer, number, order + start, end - start, l, o, p);
	}
	PyMem_RawFree(order);
	if (result < 0 || report(l, 0, 1) < 0 || out_zeros(o, 2 * BLOCK) < 0)
		return -1;
	return out_flush(o);
}

static PyObject *tree_write(Tree *t, PyObject *args, PyObject *kwargs)
{
	static char *names[] = {"open_layer", "out_fd", "on_bytes", NULL};
	PyObject *open_layer, *on_bytes = Py_None;
	Out o = {0};
	Layer l = {0};
	PathBuffer p = {0};
	if (!PyArg_ParseTupleAndKeywords(args, kwargs, "Oi|O", names, &open_layer, &o.fd,
					 &on_bytes))
		return NULL;
	PyMem_RawFree(t->buckets); /* no name is resolved again (a verify builds it again) */
	t->buckets = NULL;
	l.on_bytes = on_bytes;
	o.buf = PyMem_RawMalloc(OUT_BUFFER);
	l.buf = PyMem_RawMalloc(READ_CHUNK);
	int result = -1;
	if (o.buf == NULL || l.buf == NULL) {
		PyErr_NoMemory();
	} else {
		l.view = PyMemoryView_FromMemory(l.buf, READ_CHUNK, PyBUF_WRITE);
		if (l.view != NULL)
			result = write_tar(t, open_layer, &o, &l, &p);
	}
	Py_XDECREF(l.view);
	PyMem_RawFree(o.buf);
	PyMem_RawFree(l.buf);
	PyMem_RawFree(p.buf);
	PyMem_RawFree(p.chain);
	if (result < 0)
		return NULL;
	Py_RETURN_NONE;
}

/* -- the one-pass flatten's end (streaming.StreamedFlatten, over onepass.h) -------- */

static onepass_t *state_of(PyObject *capsule)
{
	return PyCapsule_GetPointer(capsule, ONEPASS_CAPSULE);
}

/* The file record `r` (R_FILE) was written from the member of `d`. */
static int written_from(const onepass_t *op, const Record *r, const Node *d)
{
	return r->kind == R_FILE && r->layer == (uint32_t)d->layer &&
	       entry_offset(record_entry(op, r)) == data_offset(d);
}

/* emitter.written.get((data.layer, data.ordinal)): the record of the file written from
   the member of `d` (under the member's own path), or NULL. */
static Record *written_file(onepass_t *op, const Node *d)
{
	Str member = {d->name - d->member_prefix, (uint32_t)d->member_prefix + d->name_len};
	Record *r = onepass_find(op, (const uint8_t *)member.ptr, member.len);
	return r != NULL && written_from(op, r, d) ? r : NULL;
}

/* StreamedFlatten.write_deferred_links: hardlinks whose target was not written before
   them, as the exact tree says, checked like any entry. None, or why the speculation
   failed. */
static PyObject *tree_write_deferred(Tree *t, PyObject *capsule)
{
	onepass_t *op = state_of(capsule);
	if (op == NULL)
		return NULL;
	if (op->paths_forgotten) {
		PyErr_SetString(PyExc_RuntimeError, "the one pass's path table was freed "
				"(forget_paths): write the deferred links before");
		return NULL;
	}
	PathBuffer p = {0};
	PyObject *result = NULL;
	op->out.nogil = 0;
	for (int32_t k = 0; k < t->group_count; k++) {
		const Group *g = &t->groups[k];
		const Node *d = data_of(t, g);
		Record *first = written_file(op, d);
		if (first == NULL)
			continue;
		Ref first_path = record_path(first);
		uint32_t first_id = (uint32_t)(first - op->records);
		for (int32_t id = g->first_name; id != NONE; id = t->nodes[id].next_name) {
			Str name;
			if (path_of(t, id, &p, &name) < 0)
				goto done;
			if (name.len == first_path.len &&
			    memcmp(name.ptr, onepass_bytes(op, first_path), name.len) == 0)
				continue;
			/* records move as they are added: the first is found by its number */
			if (onepass_deferred(op, (const uint8_t *)name.ptr, name.len,
					     &op->records[first_id], d->mode, mtime_of(t->nodes, d)) < 0) {
				result = onepass_reason(op);
				goto done;
			}
		}
	}
	result = Py_None;
	Py_INCREF(result);
done:
	PyMem_RawFree(p.buf);
	PyMem_RawFree(p.chain);
	return result;
}

static int same_bytes(Str a, const uint8_t *b, uint32_t len)
{
	return a.len == len && memcmp(a.ptr, b, len) == 0;
}

/* StreamedFlatten.verify's checks of the link groups: each file written under one of
   its names, the other names linked to it. NULL (no exception): they hold. */
static PyObject *unproven_files(Tree *t, onepass_t *op, PathBuffer *p)
{
	PyObject *reason = NULL;
	for (int32_t k = 0; k < t->group_count && reason == NULL; k++) {
		const Group *g = &t->groups[k];
		const Node *d = data_of(t, g);
		Record *file = written_file(op, d);
		Str name;
		int found = 0;
		for (int32_t id = g->first_name; id != NONE && file && !found; id = t->nodes[id].next_name) {
			if (path_of(t, id, p, &name) < 0)
				goto failed;
			found = onepass_find(op, (const uint8_t *)name.ptr, name.len) == file;
		}
		if (!found) {
			if (path_of(t, g->first_name, p, &name) < 0)
				goto failed;
			PyObject *first = text(name);
			if (first == NULL)
				goto failed;
			reason = PyUnicode_FromFormat("%R is not the file written from layer %d", first,
						      (int)d->layer + 1);
			Py_DECREF(first);
			if (reason == NULL)
				goto failed;
			break;
		}
		uint32_t file_id = (uint32_t)(file - op->records) + 1;
		for (int32_t id = g->first_name; id != NONE; id = t->nodes[id].next_name) {
			if (path_of(t, id, p, &name) < 0)
				goto failed;
			const Record *r = onepass_find(op, (const uint8_t *)name.ptr, name.len);
			if (r == file || (r != NULL && r->kind == R_HARDLINK && r->target == file_id))
				continue;
			Ref path = record_path(file);
			PyObject *first = text((Str){(const char *)onepass_bytes(op, path), path.len});
			if (first == NULL)
				goto failed;
			reason = PyUnicode_FromFormat("the names of %R are not all linked to it", first);
			Py_DECREF(first);
			if (reason == NULL)
				goto failed;
			break;
		}
	}
	return reason;
failed:
	return NULL;
}

/* The symlinks written are the image's (path, target, mtime): 1, 0, or -1. */
static int same_symlinks(Tree *t, onepass_t *op, PathBuffer *p)
{
	uint32_t written = 0;
	for (uint32_t k = 0; k < op->record_count; k++)
		written += op->records[k].kind == R_SYMLINK;
	if (written != (uint32_t)t->symlink_count)
		return 0;
	for (int32_t k = 0; k < t->symlink_count; k++) {
		const Node *n = &t->nodes[t->symlinks[k]];
		Str path;
		if (path_of(t, t->symlinks[k], p, &path) < 0)
			return -1;
		const Record *r = onepass_find(op, (const uint8_t *)path.ptr, path.len);
		if (r == NULL || r->kind != R_SYMLINK)
			return 0;
		const uint8_t *e = record_entry(op, r);
		EntryFields f;
		entry_fields(e, &f);
		if (f.mtime != mtime_of(t->nodes, n) ||
		    !same_bytes(link_of(n), entry_link(e), entry_link_len(e)))
			return 0;
	}
	return 1;
}

/* The directories written, explicitly or implicitly (0755, mtime 0), are the image's. */
static int same_directories(Tree *t, onepass_t *op, PathBuffer *p)
{
	uint32_t written = 0;
	for (uint32_t k = 0; k < op->record_count; k++)
		written += op->records[k].kind == R_DIR || (op->records[k].flags & F_IMPLICIT);
	if (written != (uint32_t)t->dir_count)
		return 0;
	for (int32_t k = 0; k < t->dir_count; k++) {
		const Node *n = &t->nodes[t->dirs[k]];
		Str path;
		if (path_of(t, t->dirs[k], p, &path) < 0)
			return -1;
		const Record *r = onepass_find(op, (const uint8_t *)path.ptr, path.len);
		uint32_t mode;
		int64_t mtime = 0;
		if (r != NULL && r->kind == R_DIR) {
			EntryFields f;
			entry_fields(record_entry(op, r), &f);
			mode = f.mode;
			mtime = f.mtime;
		} else if (r != NULL && (r->flags & F_IMPLICIT)) {
			mode = IMPLICIT_DIR_MODE;
		} else {
			return 0;
		}
		if (mode != n->mode || mtime != n->dir_mtime)
			return 0;
	}
	return 1;
}

/* -- the same verify, from the records: each path written resolved in this tree ----- */

/* The (parent, name) table again, when write() or a verify freed it. */
static int ensure_buckets(Tree *t)
{
	if (t->buckets != NULL)
		return 0;
	uint32_t buckets = 1024;
	while (buckets <= (uint32_t)t->node_count)
		buckets *= 2;
	return rehash(t, buckets);
}

/* The node at `path` (components joined by "/"; never the root), or NONE. */
static int32_t resolve_path(Tree *t, const uint8_t *path, uint32_t len)
{
	int32_t id = ROOT;
	uint32_t start = 0;
	if (len == 0)
		return NONE;
	while (start <= len && id != NONE) {
		uint32_t end = start;
		while (end < len && path[end] != '/')
			end++;
		id = child_of(t, id, (Str){(const char *)path + start, end - start});
		start = end + 1;
	}
	return id;
}

/* Every record written resolved in the tree, as the node it must be: 1 when each is,
   0 when one is not. With the counts checked first, it proves what the table's checks
   (unproven_files, same_symlinks, same_directories) prove: distinct paths resolve to
   distinct nodes, so the records of each kind are as many as the tree's names of it,
   each matched once (tests/unit/test_native_onepass.py compares both verdicts). */
static int records_resolve(Tree *t, const onepass_t *op)
{
	uint32_t symlinks = 0, dirs = 0, files = 0, links = 0;
	for (uint32_t k = 0; k < op->record_count; k++) {
		const Record *r = &op->records[k];
		int as_dir = r->kind == R_DIR || (r->flags & F_IMPLICIT);
		if ((r->kind == R_NONE || r->kind == R_DEFERRED) && !as_dir)
			continue; /* hidden only, or a link never written: nothing went out */
		const uint8_t *path = onepass_bytes(op, record_path(r));
		int32_t id = resolve_path(t, path, r->path_len);
		if (id == NONE || id == ROOT)
			return 0;
		const Node *n = &t->nodes[id];
		if (as_dir) {
			dirs++;
			uint32_t mode = IMPLICIT_DIR_MODE;
			int64_t mtime = 0;
			if (r->kind == R_DIR) {
				EntryFields f;
				entry_fields(record_entry(op, r), &f);
				mode = f.mode;
				mtime = f.mtime;
			}
			if (n->kind != K_DIR || n->mode != mode || n->dir_mtime != mtime)
				return 0;
			if (r->kind == R_DIR || r->kind == R_NONE || r->kind == R_DEFERRED)
				continue;
		}
		if (r->kind == R_SYMLINK) {
			symlinks++;
			const uint8_t *e = record_entry(op, r);
			EntryFields f;
			entry_fields(e, &f);
			if (n->kind != K_SYMLINK || mtime_of(t->nodes, n) != f.mtime ||
			    !same_bytes(link_of(n), entry_link(e), entry_link_len(e)))
				return 0;
		} else if (r->kind == R_FILE || r->kind == R_HARDLINK) {
			if (n->kind != K_FILE)
				return 0;
			files += r->kind == R_FILE;
			links += r->kind == R_HARDLINK;
			const Record *file = r;
			if (r->kind == R_HARDLINK) {
				if (r->target == 0 || r->target > op->record_count)
					return 0;
				file = &op->records[r->target - 1];
			}
			if (!written_from(op, file, &t->nodes[n->data]))
				return 0;
		} else {
			return 0; /* no other kind */
		}
	}
	return symlinks == (uint32_t)t->symlink_count && dirs == (uint32_t)t->dir_count &&
	       files == (uint32_t)t->group_count && links == t->hardlinks;
}

static PyObject *table_checks(Tree *t, onepass_t *op);

/* StreamedFlatten.verify: None when the tar written holds exactly this tree, else why
   not (the reason of a SpeculationFailed). Without the one pass's path table
   (forget_paths), from its records, through this tree's (parent, name) table; the
   reason of a failure is then the table's, built again for it (a rare path). */
static PyObject *tree_verify(Tree *t, PyObject *capsule)
{
	onepass_t *op = state_of(capsule);
	if (op == NULL)
		return NULL;
	if (op->files != (uint32_t)t->group_count || op->links != t->hardlinks)
		return PyUnicode_FromFormat("%u files and %u hardlinks were written; the image has "
					    "%d and %llu", op->files, op->links, (int)t->group_count,
					    (unsigned long long)t->hardlinks);
	if (!op->paths_forgotten)
		return table_checks(t, op);
	if (ensure_buckets(t) < 0)
		return NULL;
	int same = records_resolve(t, op);
	PyMem_RawFree(t->buckets);
	t->buckets = NULL;
	if (same)
		Py_RETURN_NONE;
	if (onepass_remember_paths(op) < 0) {
		onepass_forget_paths(op);
		return PyErr_NoMemory();
	}
	PyObject *reason = table_checks(t, op);
	onepass_forget_paths(op);
	if (reason == Py_None) { /* cannot be (see records_resolve): fail safe all the same */
		Py_DECREF(reason);
		reason = PyUnicode_FromString("the paths written do not resolve to the image's");
	}
	return reason;
}

/* The checks over the path table: each path of the tree looked up in it. */
static PyObject *table_checks(Tree *t, onepass_t *op)
{
	PathBuffer p = {0};
	PyObject *result = unproven_files(t, op, &p);
	int same = 1;
	if (result == NULL && !PyErr_Occurred()) {
		same = same_symlinks(t, op, &p);
		if (same == 0)
			result = PyUnicode_FromString("the symlinks written are not the image's");
	}
	if (result == NULL && !PyErr_Occurred() && same > 0) {
		same = same_directories(t, op, &p);
		if (same == 0)
			result = PyUnicode_FromString("the directories written are not the image's");
	}
	PyMem_RawFree(p.buf);
	PyMem_RawFree(p.chain);
	if (result == NULL && !PyErr_Occurred())
		Py_RETURN_NONE;
	return result;
}

/* -- the Tree type -------------------------------------------------------------- */

/* The layers holding surviving file data (the ones write() opens), ascending. */
static PyObject *tree_data_layers(Tree *t, PyObject *unused)
{
	(void)unused;
	Py_ssize_t count = PyTuple_GET_SIZE(t->layers);
	char *used = PyMem_RawCalloc((size_t)count + 1, 1);
	if (used == NULL)
		return PyErr_NoMemory();
	for (int32_t k = 0; k < t->group_count; k++)
		used[layer_of(t, &t->groups[k])] = 1;
	PyObject *list = PyList_New(0);
	for (Py_ssize_t i = 0; list != NULL && i < count; i++) {
		if (!used[i])
			continue;
		PyObject *number = PyLong_FromSsize_t(i);
		if (number == NULL || PyList_Append(list, number) < 0)
			Py_CLEAR(list);
		Py_XDECREF(number);
	}
	PyMem_RawFree(used);
	return list;
}

/* The offsets of layer `layer`'s members whose data the tree keeps (the read-ahead's
   check: none of them may have been handed out as zeros, inflate_ahead.py). */
static PyObject *tree_data_offsets(Tree *t, PyObject *arg)
{
	long layer = PyLong_AsLong(arg);
	if (layer == -1 && PyErr_Occurred())
		return NULL;
	PyObject *list = PyList_New(0);
	for (int32_t k = 0; list != NULL && k < t->group_count; k++) {
		const Node *d = data_of(t, &t->groups[k]);
		if (d->layer != layer)
			continue;
		PyObject *offset = PyLong_FromLongLong(data_offset(d));
		if (offset == NULL || PyList_Append(list, offset) < 0)
			Py_CLEAR(list);
		Py_XDECREF(offset);
	}
	return list;
}

static void tree_dealloc(Tree *t)
{
	Py_XDECREF(t->indexes);
	Py_XDECREF(t->layers);
	PyMem_RawFree(t->nodes);
	PyMem_RawFree(t->buckets);
	PyMem_RawFree(t->dirs);
	PyMem_RawFree(t->symlinks);
	PyMem_RawFree(t->groups);
	PyObject_Free(t);
}

static PyObject *get_files(Tree *t, void *c) { (void)c; return PyLong_FromLong(t->group_count); }
static PyObject *get_dirs(Tree *t, void *c) { (void)c; return PyLong_FromLong(t->dir_count); }
static PyObject *get_symlinks(Tree *t, void *c) { (void)c; return PyLong_FromLong(t->symlink_count); }
static PyObject *get_hardlinks(Tree *t, void *c) { (void)c; return PyLong_FromUnsignedLongLong(t->hardlinks); }
static PyObject *get_dropped(Tree *t, void *c) { (void)c; return PyLong_FromUnsignedLongLong(t->dropped); }
static PyObject *get_data_bytes(Tree *t, void *c) { (void)c; return PyLong_FromUnsignedLongLong(t->data_bytes); }
static PyObject *get_layers(Tree *t, void *c) { (void)c; Py_INCREF(t->layers); return t->layers; }
static PyObject *get_nodes(Tree *t, void *c) { (void)c; return PyLong_FromLong(t->node_count); }

static PyGetSetDef tree_getset[] = {
	{"files", (getter)get_files, NULL, "surviving files (link groups)", NULL},
	{"dirs", (getter)get_dirs, NULL, "surviving directories", NULL},
	{"symlinks", (getter)get_symlinks, NULL, "surviving symlinks", NULL},
	{"hardlinks", (getter)get_hardlinks, NULL, "names beyond the first of each link group", NULL},
	{"dropped", (getter)get_dropped, NULL, "members the layers dropped", NULL},
	{"data_bytes", (getter)get_data_bytes, NULL, "bytes of surviving file data", NULL},
	{"layers", (getter)get_layers, NULL, "the layer names, oldest first", NULL},
	{"nodes", (getter)get_nodes, NULL, "nodes made while merging (memory used)", NULL},
	{NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef tree_methods[] = {
	{"write", (PyCFunction)(void (*)(void))tree_write, METH_VARARGS | METH_KEYWORDS,
	 "write(open_layer, out_fd, on_bytes=None): the canonical tar into the fd"},
	{"data_layers", (PyCFunction)tree_data_layers, METH_NOARGS,
	 "the layers holding surviving file data"},
	{"data_offsets", (PyCFunction)tree_data_offsets, METH_O,
	 "data_offsets(layer): the offsets of that layer's members whose data the tree keeps"},
	{"write_deferred", (PyCFunction)tree_write_deferred, METH_O,
	 "write_deferred(state): the one-pass flatten's deferred hardlinks; None, or why not"},
	{"verify", (PyCFunction)tree_verify, METH_O,
	 "verify(state): None when the one-pass tar holds exactly this tree, else why not"},
	{NULL, NULL, 0, NULL},
};

static PyTypeObject TreeType = {
	PyVarObject_HEAD_INIT(NULL, 0)
	.tp_name = "imagegw.pipeline.native._flat.Tree",
	.tp_basicsize = sizeof(Tree),
	.tp_dealloc = (destructor)tree_dealloc,
	.tp_flags = Py_TPFLAGS_DEFAULT,
	.tp_doc = "A merged image tree (merge() makes one).",
	.tp_methods = tree_methods,
	.tp_getset = tree_getset,
};

static PyMethodDef module_methods[] = {
	{"merge", merge, METH_O, "merge(indexes): the tree of compact layer indexes, oldest first"},
	{NULL, NULL, 0, NULL},
};

static struct PyModuleDef flat_module = {
	PyModuleDef_HEAD_INIT, "_flat", "The compiled OCI merge and canonical tar writer.", -1,
	module_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__flat(void)
{
	if (PyType_Ready(&TreeType) < 0)
		return NULL;
	PyObject *errors = PyImport_ImportModule("imagegw.domain.errors");
	if (errors == NULL)
		return NULL;
	ContentRejected = PyObject_GetAttrString(errors, "ContentRejected");
	Py_DECREF(errors);
	if (ContentRejected == NULL)
		return NULL;
	PyObject *module = PyModule_Create(&flat_module);
	if (module == NULL)
		return NULL;
	Py_INCREF(&TreeType);
	if (PyModule_AddObject(module, "Tree", (PyObject *)&TreeType) < 0) {
		Py_DECREF(&TreeType);
		Py_DECREF(module);
		return NULL;
	}
	return module;
}
