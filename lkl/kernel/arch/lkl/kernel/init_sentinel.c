// SPDX-License-Identifier: GPL-2.0
/*
 * pid 1 without a program to run. kernel_init() insists on exec'ing /init (it panics
 * otherwise) and a library kernel has no user code. So an empty /init is created in
 * the initial ramfs, and a binary format that accepts exactly that file performs the
 * exec bookkeeping (pid 1 gets a fresh mm and its credentials) without loading code.
 * kernel_init() then returns, and the arch keeps pid 1 as the library's init.
 */
#include <linux/init.h>
#include <linux/binfmts.h>
#include <linux/fs.h>
#include <linux/file.h>
#include <linux/fcntl.h>
#include <linux/sched.h>
#include <linux/personality.h>
#include <linux/task_work.h>

static struct inode *sentinel_inode;

static int load_sentinel(struct linux_binprm *bprm)
{
	int ret;

	if (file_inode(bprm->file) != sentinel_inode)
		return -ENOEXEC;
	ret = begin_new_exec(bprm);
	if (ret)
		return ret;
	set_personality(PER_LINUX);
	setup_new_exec(bprm);
	finalize_exec(bprm);
	return 0;
}

static struct linux_binfmt sentinel_format = {
	.module		= THIS_MODULE,
	.load_binary	= load_sentinel,
};

static int __init sentinel_init(void)
{
	struct file *file = filp_open("/init", O_CREAT | O_WRONLY | O_EXCL, 0700);

	if (IS_ERR(file))
		return PTR_ERR(file);
	sentinel_inode = file_inode(file);
	ihold(sentinel_inode);
	filp_close(file, NULL);
	/* pid 1 defers the final fput to task work; exec needs the writer gone now. */
	task_work_run();
	register_binfmt(&sentinel_format);
	return 0;
}
late_initcall(sentinel_init);
