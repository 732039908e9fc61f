//! The shard's other tasks: replies from the service core, cross-core batches out (flusher) and
//! in, group commits (io_uring fdatasync) and the store's blocking jobs.

use super::*;

/// Feeds the service core's replies to the shard whenever the service rings the doorbell.
pub(super) async fn service_receiver(
    ctx: Rc<Ctx>,
    replies: crossbeam_channel::Receiver<crate::service::ServiceReply>,
    mut bell: glommio::net::UnixStream,
) {
    use futures_lite::AsyncReadExt;
    let mut rung = [0u8; 64];
    loop {
        match bell.read(&mut rung).await {
            Ok(0) | Err(_) => return, // the service core is gone: the node is stopping
            Ok(_) => {}
        }
        loop {
            let now = ctx.clock.now();
            let mut n = 0;
            {
                let mut shard = ctx.shard.borrow_mut();
                while let Ok(r) = replies.try_recv() {
                    shard.on_service(now, r);
                    n += 1;
                    if n == SERVICE_REPLIES_PER_TURN {
                        break;
                    }
                }
            }
            ctx.after_work();
            if n < SERVICE_REPLIES_PER_TURN {
                break;
            }
            glommio::yield_if_needed().await;
        }
    }
}

/// Runs the store's blocking work on the executor's blocking thread: makes the next segments
/// (create, `posix_fallocate`, header, `fsync`, rename, directory `fsync`: milliseconds of
/// blocking system calls the shard no longer waits for when its active segment rolls) and
/// deletes reclaimed ones (unlink, directory `fsync`), handing each outcome back to the shard.
pub(super) async fn segment_maker(
    ctx: Rc<Ctx>,
    jobs: local_channel::LocalReceiver<
        crate::store::StoreJobOf<crate::store::backend::MmapBackend>,
    >,
) {
    while let Some(job) = jobs.recv().await {
        ctx.segment_busy.set(true);
        let done = glommio::executor().spawn_blocking(move || job.run()).await;
        ctx.segment_busy.set(false);
        let now = ctx.clock.now();
        ctx.shard.borrow_mut().on_store_job(now, done);
        // The next job (a deletion queued behind a making, or one this outcome made possible)
        // is taken now rather than at the next piece of work.
        ctx.after_work();
    }
}

/// A cross-core batch on its way: stamped when it left the sender's outbox (`Clock::elapsed_us`
/// of the node's one clock), so the owner core can tell how long it travelled.
#[derive(Debug)]
pub struct HopBatch {
    pub(super) sent_us: u64,
    pub(super) msgs: Vec<HopMsg>,
}

pub(super) async fn flusher(
    ctx: Rc<Ctx>,
    senders: Rc<Senders<HopBatch>>,
    peer: usize,
    wake: local_channel::LocalReceiver<()>,
) {
    while wake.recv().await.is_some() {
        loop {
            let batch = ctx.shard.borrow_mut().take_outbox(peer);
            let Some(batch) = batch else { break };
            // The outbox shrank: readers held by its pressure may go on.
            ctx.resume_readers();
            let n = batch.len() as u64;
            ctx.shard.borrow().metrics().hop_batch_msgs.observe(n);
            let batch = HopBatch {
                sent_us: ctx.clock.elapsed_us(),
                msgs: batch,
            };
            if senders.send_to(peer, batch).await.is_err() {
                return; // the peer is gone: the node is stopping
            }
        }
    }
}

pub(super) async fn hop_receiver(ctx: Rc<Ctx>, receivers: Rc<Receivers<HopBatch>>, peer: usize) {
    while let Ok(Some(batch)) = receivers.recv_from(peer).await {
        // Every shard's clock has the node's one origin: the stamps compare.
        let delay = ctx.clock.elapsed_us().saturating_sub(batch.sent_us);
        ctx.shard.borrow().metrics().hop_delay.observe_us(delay);
        let now = ctx.clock.now();
        ctx.shard.borrow_mut().on_hops(now, batch.msgs);
        ctx.after_work();
    }
}

/// Runs a group commit off the shard's core: an io_uring `fdatasync` for each segment written
/// since the last one, issued on this executor's ring, so the reactor goes on reading, routing
/// and writing while the disk works (a blocking `msync` stalled the whole core for its
/// duration). The shard answers the `Stored` replies the commit covers when it completes; a
/// failure stops this shard, and the node.
pub(super) fn spawn_group_commit(
    ctx: Rc<Ctx>,
    fatal: Arc<FatalStop>,
    me: usize,
    job: crate::store::SyncJobOf<crate::store::backend::MmapBackend>,
) {
    glommio::spawn_local(async move {
        let started_us = ctx.clock.elapsed_us();
        let mut outcome = Ok(());
        for file in job.targets {
            // SAFETY: `into_raw_fd` hands over a descriptor this task alone owns (a duplicate of
            // the segment's); the glommio file takes it over and closes it.
            let f = unsafe { glommio::io::BufferedFile::from_raw_fd(file.into_raw_fd()) };
            let synced = f.fdatasync().await.map_err(std::io::Error::from);
            let _ = f.close().await;
            if let Err(e) = synced {
                outcome = Err(e);
                break;
            }
        }
        let now = ctx.clock.now();
        ctx.shard
            .borrow()
            .metrics()
            .store_sync
            .observe_us(ctx.clock.elapsed_us().saturating_sub(started_us));
        ctx.shard.borrow_mut().on_synced(now, outcome);
        let why = ctx.shard.borrow().fatal().map(str::to_string);
        if let Some(why) = why {
            fatal.stop_here(format!("shard {me}: {why}"));
        }
        // The replies it released go out; appends made meanwhile wake the tick for the next one.
        ctx.after_work();
    })
    .detach();
}
