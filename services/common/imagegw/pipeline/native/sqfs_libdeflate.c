/*
 * Loaded into tar2sqfs (LD_PRELOAD) by the worker: makes its gzip compressor
 * compress with libdeflate instead of zlib, at the same level.
 *
 * Why: at gzip level 6 libdeflate compresses squashfs blocks about 1.8x faster than
 * zlib, with slightly smaller output, and compression is most of the CPU a conversion
 * takes. The streams it writes are ordinary zlib streams (RFC 1950, 32 KiB window),
 * which is what squashfs "gzip" means: the kernel, unsquashfs and squashfuse read
 * them as they read zlib's.
 *
 * How: libsquashfs's public compressor object (sqfs/compressor.h) is a table of
 * function pointers. We wrap sqfs_compressor_create; when it made a gzip compressor
 * with settings libdeflate reproduces exactly (compressing, 32 KiB window, no zlib
 * strategy flags), we point its do_block at ours, and its copy at a wrapper that does
 * the same for the copies tar2sqfs's compressor threads use. Anything else (other
 * compressors, decompression, strategy selection) is left exactly as it was: its
 * configuration, the options written to the image, and destruction stay libsquashfs's.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <libdeflate.h>
#include <sqfs/compressor.h>
#include <sqfs/error.h>
#include <sqfs/super.h>

typedef int (*create_fn)(const sqfs_compressor_config_t *, sqfs_compressor_t **);
typedef sqfs_object_t *(*copy_fn)(const sqfs_object_t *);

/* The copy function of libsquashfs's gzip compressor, taken from the first one patched. */
static copy_fn gzip_copy;

/* One libdeflate compressor per thread (tar2sqfs compresses on several threads). */
static __thread struct libdeflate_compressor *thread_compressor;
static __thread int thread_level;

static struct libdeflate_compressor *compressor_for(int level)
{
	if (thread_compressor == NULL || thread_level != level) {
		libdeflate_free_compressor(thread_compressor);
		thread_compressor = libdeflate_alloc_compressor(level);
		thread_level = level;
	}
	return thread_compressor;
}

static sqfs_s32 deflate_block(sqfs_compressor_t *cmp, const sqfs_u8 *in, sqfs_u32 size,
			      sqfs_u8 *out, sqfs_u32 outsize)
{
	sqfs_compressor_config_t cfg;
	struct libdeflate_compressor *compressor;
	size_t written;

	if (size >= 0x7FFFFFFF)
		return SQFS_ERROR_ARG_INVALID;
	cmp->get_configuration(cmp, &cfg);
	compressor = compressor_for((int)cfg.level);
	if (compressor == NULL)
		return SQFS_ERROR_ALLOC;
	/* 0: it did not fit. Like zlib's path, a result no smaller than the input is 0
	 * too: the block is stored uncompressed. */
	written = libdeflate_zlib_compress(compressor, in, size, out, outsize);
	if (written == 0 || written >= size)
		return 0;
	return (sqfs_s32)written;
}

static int reproducible(const sqfs_compressor_config_t *cfg)
{
	return cfg->id == SQFS_COMP_GZIP
		&& (cfg->flags & SQFS_COMP_FLAG_UNCOMPRESS) == 0
		&& (cfg->flags & SQFS_COMP_FLAG_GZIP_ALL) == 0
		&& cfg->opt.gzip.window_size == SQFS_GZIP_DEFAULT_WINDOW
		&& cfg->level >= 1 && cfg->level <= 9;
}

static sqfs_object_t *copy_patched(const sqfs_object_t *orig);

static void patch(sqfs_compressor_t *cmp)
{
	if (gzip_copy == NULL)
		gzip_copy = cmp->base.copy;
	cmp->base.copy = copy_patched;
	cmp->do_block = deflate_block;
}

static sqfs_object_t *copy_patched(const sqfs_object_t *orig)
{
	sqfs_object_t *copy = gzip_copy(orig);

	if (copy != NULL)
		patch((sqfs_compressor_t *)copy);
	return copy;
}

int sqfs_compressor_create(const sqfs_compressor_config_t *cfg, sqfs_compressor_t **out)
{
	static create_fn create;
	int ret;

	if (create == NULL)
		create = (create_fn)dlsym(RTLD_NEXT, "sqfs_compressor_create");
	if (create == NULL)
		return SQFS_ERROR_UNSUPPORTED;
	ret = create(cfg, out);
	if (ret == 0 && *out != NULL && reproducible(cfg))
		patch(*out);
	return ret;
}
