/*
 * hello-fuse: a tiny low-level libfuse 3 file system for Porta's translator tests.
 *
 * It serves one directory holding
 *   hello  read-only (0444), the fixed text HELLO_TEXT;
 *   note   writable (0644), kept in memory (at most NOTE_MAX bytes), empty at start;
 *          once it starts with "hang", reads of 'hello' are never answered.
 *
 * Usage: hello-fuse [-f] [-d] [-o opt,...] MOUNTPOINT
 * MOUNTPOINT may be /dev/fd/N: libfuse then uses the already open FUSE device N
 * instead of mounting (no privilege, no /dev/fuse needed).
 *
 * Built statically by porta_integration::debian (gcc, pkg-config --static fuse3).
 */
#define FUSE_USE_VERSION 34

#include <fuse_lowlevel.h>

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define HELLO_TEXT "Hello from a Porta translator test.\n"
#define NOTE_MAX (64 * 1024)

enum { INO_ROOT = 1, INO_HELLO = 2, INO_NOTE = 3 };

static char note_data[NOTE_MAX];
static size_t note_len;
static struct timespec start_time;
static struct timespec note_time;

/* Fills *st for inode ino; returns 0, or ENOENT for an unknown inode. */
static int fill_stat(fuse_ino_t ino, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = ino;
	st->st_uid = getuid();
	st->st_gid = getgid();
	st->st_atim = start_time;
	st->st_mtim = start_time;
	st->st_ctim = start_time;
	switch (ino) {
	case INO_ROOT:
		st->st_mode = S_IFDIR | 0755;
		st->st_nlink = 2;
		return 0;
	case INO_HELLO:
		st->st_mode = S_IFREG | 0444;
		st->st_nlink = 1;
		st->st_size = (off_t)strlen(HELLO_TEXT);
		return 0;
	case INO_NOTE:
		st->st_mode = S_IFREG | 0644;
		st->st_nlink = 1;
		st->st_size = (off_t)note_len;
		st->st_mtim = note_time;
		st->st_ctim = note_time;
		return 0;
	default:
		return ENOENT;
	}
}

static fuse_ino_t ino_of(const char *name)
{
	if (strcmp(name, "hello") == 0)
		return INO_HELLO;
	if (strcmp(name, "note") == 0)
		return INO_NOTE;
	return 0;
}

static void hf_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fuse_entry_param e;
	fuse_ino_t ino;

	if (parent != INO_ROOT) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	ino = ino_of(name);
	if (ino == 0) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	memset(&e, 0, sizeof(e));
	e.ino = ino;
	e.attr_timeout = 0;
	e.entry_timeout = 0;
	fill_stat(ino, &e.attr);
	fuse_reply_entry(req, &e);
}

static void hf_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct stat st;
	int err = fill_stat(ino, &st);

	(void)fi;
	if (err)
		fuse_reply_err(req, err);
	else
		fuse_reply_attr(req, &st, 0);
}

static void hf_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
		       struct fuse_file_info *fi)
{
	struct stat st;
	int other = to_set & ~(FUSE_SET_ATTR_SIZE | FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME |
			       FUSE_SET_ATTR_ATIME_NOW | FUSE_SET_ATTR_MTIME_NOW | FUSE_SET_ATTR_CTIME);

	(void)fi;
	if (ino != INO_NOTE) {
		fuse_reply_err(req, ino == INO_ROOT || ino == INO_HELLO ? EPERM : ENOENT);
		return;
	}
	if (other) {
		fuse_reply_err(req, EPERM);
		return;
	}
	if (to_set & FUSE_SET_ATTR_SIZE) {
		if (attr->st_size < 0 || attr->st_size > NOTE_MAX) {
			fuse_reply_err(req, EFBIG);
			return;
		}
		if ((size_t)attr->st_size > note_len)
			memset(note_data + note_len, 0, (size_t)attr->st_size - note_len);
		note_len = (size_t)attr->st_size;
	}
	clock_gettime(CLOCK_REALTIME, &note_time);
	fill_stat(ino, &st);
	fuse_reply_attr(req, &st, 0);
}

/* Appends one entry to a readdir reply buffer; returns the new used size. */
static size_t add_entry(fuse_req_t req, char *buf, size_t size, size_t used, const char *name,
			fuse_ino_t ino, off_t next)
{
	struct stat st;
	size_t need;

	memset(&st, 0, sizeof(st));
	fill_stat(ino, &st);
	need = fuse_add_direntry(req, NULL, 0, name, NULL, 0);
	if (used + need > size)
		return used;
	fuse_add_direntry(req, buf + used, size - used, name, &st, next);
	return used + need;
}

static void hf_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	static const struct {
		const char *name;
		fuse_ino_t ino;
	} entries[] = {
		{ ".", INO_ROOT }, { "..", INO_ROOT }, { "hello", INO_HELLO }, { "note", INO_NOTE },
	};
	char *buf;
	size_t used = 0;
	off_t i;

	(void)fi;
	if (ino != INO_ROOT) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	buf = calloc(1, size);
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	for (i = off; i < (off_t)(sizeof(entries) / sizeof(entries[0])); i++) {
		size_t next = add_entry(req, buf, size, used, entries[i].name, entries[i].ino, i + 1);
		if (next == used)
			break;
		used = next;
	}
	fuse_reply_buf(req, buf, used);
	free(buf);
}

static void hf_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	int acc = fi->flags & O_ACCMODE;

	if (ino == INO_ROOT) {
		fuse_reply_err(req, EISDIR);
		return;
	}
	if (ino == INO_HELLO && acc != O_RDONLY) {
		fuse_reply_err(req, EACCES);
		return;
	}
	if (ino != INO_HELLO && ino != INO_NOTE) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	if (ino == INO_NOTE && (fi->flags & O_TRUNC) && acc != O_RDONLY) {
		note_len = 0;
		clock_gettime(CLOCK_REALTIME, &note_time);
	}
	fi->direct_io = 1; /* the size of note changes: no page cache */
	fuse_reply_open(req, fi);
}

static void hf_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	const char *data = ino == INO_HELLO ? HELLO_TEXT : note_data;
	size_t len = ino == INO_HELLO ? strlen(HELLO_TEXT) : note_len;

	(void)fi;
	/* A hung file system on demand: once 'note' starts with "hang", reads of 'hello'
	 * are never answered (the loop goes on serving everything else). */
	if (ino == INO_HELLO && note_len >= 4 && memcmp(note_data, "hang", 4) == 0)
		return;
	if (off < 0 || (size_t)off >= len) {
		fuse_reply_buf(req, NULL, 0);
		return;
	}
	if (size > len - (size_t)off)
		size = len - (size_t)off;
	fuse_reply_buf(req, data + off, size);
}

static void hf_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
		     struct fuse_file_info *fi)
{
	(void)fi;
	if (ino != INO_NOTE) {
		fuse_reply_err(req, EBADF);
		return;
	}
	if (off < 0 || (size_t)off > NOTE_MAX || size > NOTE_MAX - (size_t)off) {
		fuse_reply_err(req, EFBIG);
		return;
	}
	if ((size_t)off > note_len)
		memset(note_data + note_len, 0, (size_t)off - note_len);
	memcpy(note_data + off, buf, size);
	if ((size_t)off + size > note_len)
		note_len = (size_t)off + size;
	clock_gettime(CLOCK_REALTIME, &note_time);
	fuse_reply_write(req, size);
}

static const struct fuse_lowlevel_ops ops = {
	.lookup = hf_lookup,
	.getattr = hf_getattr,
	.setattr = hf_setattr,
	.readdir = hf_readdir,
	.open = hf_open,
	.read = hf_read,
	.write = hf_write,
};

static void usage(const char *prog)
{
	printf("usage: %s [options] MOUNTPOINT\n"
	       "Serves a directory with a read-only file 'hello' and a writable file 'note'.\n"
	       "MOUNTPOINT may be /dev/fd/N, an open FUSE device.\n\n",
	       prog);
	fuse_cmdline_help();
	fuse_lowlevel_help();
}

int main(int argc, char *argv[])
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct fuse_cmdline_opts opts;
	struct fuse_session *se = NULL;
	int ret = 1;

	clock_gettime(CLOCK_REALTIME, &start_time);
	note_time = start_time;
	if (fuse_parse_cmdline(&args, &opts) != 0)
		return 2;
	if (opts.show_help) {
		usage(argv[0]);
		ret = 0;
		goto out_args;
	}
	if (opts.show_version) {
		printf("hello-fuse 1.0, FUSE library version %s\n", fuse_pkgversion());
		fuse_lowlevel_version();
		ret = 0;
		goto out_args;
	}
	if (!opts.mountpoint) {
		fprintf(stderr, "%s: no mount point given (try --help)\n", argv[0]);
		ret = 2;
		goto out_args;
	}
	se = fuse_session_new(&args, &ops, sizeof(ops), NULL);
	if (!se)
		goto out_args;
	if (fuse_set_signal_handlers(se) != 0)
		goto out_session;
	if (fuse_session_mount(se, opts.mountpoint) != 0)
		goto out_signals;
	if (fuse_daemonize(opts.foreground) != 0)
		goto out_unmount;
	ret = fuse_session_loop(se) == 0 ? 0 : 1;
out_unmount:
	fuse_session_unmount(se);
out_signals:
	fuse_remove_signal_handlers(se);
out_session:
	fuse_session_destroy(se);
out_args:
	free(opts.mountpoint);
	fuse_opt_free_args(&args);
	return ret;
}
