/**
 * Joins a local TCP socket and a mux stream (as a MuxDuplex) in both directions, with half-close
 * and backpressure, and turns failures into the right kind of ending on each side: a reset on
 * the stream becomes a TCP RST locally, a local socket error becomes a stream reset.
 */
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { type MuxStream, StreamErrorCode, StreamResetError } from '@narrowlink/protocol';
import { MuxDuplex } from '@narrowlink/protocol/stream';

export interface BridgeResult {
  /** Resolves when both directions are done; carries the reset, if the stream was reset. */
  done: Promise<StreamResetError | undefined>;
  duplex: MuxDuplex;
}

export function bridgeSocket(socket: Socket, stream: MuxStream): BridgeResult {
  const duplex = new MuxDuplex(stream);
  const done = new Promise<StreamResetError | undefined>((resolve) => {
    let finished = false;
    const finish = (reason: StreamResetError | undefined): void => {
      if (finished) return;
      finished = true;
      resolve(reason);
    };
    socket.on('error', (error: NodeJS.ErrnoException) => {
      duplex.destroy(new StreamResetError(StreamErrorCode.CANCELLED, `local socket: ${error.code ?? error.message}`));
    });
    duplex.on('error', (error: Error) => {
      // The far side reset: abort the local connection so its owner sees a reset, not a clean end.
      if (!socket.destroyed) socket.resetAndDestroy();
      finish(error instanceof StreamResetError ? error : new StreamResetError(StreamErrorCode.INTERNAL, error.message));
    });
    socket.on('close', (hadError: boolean) => {
      if (!duplex.destroyed && stream.state !== 'closed') {
        if (!hadError && socket.readableEnded && !duplex.writableFinished) {
          // The local side ended cleanly and closed while what it wrote still waits for send credit (a slow peer, a
          // full session): let the stream send it and its FIN — cancelling now would cut off the end of the data —
          // then stop reading what nobody will take.
          duplex.once('finish', () => {
            if (!duplex.readableEnded && !duplex.destroyed) duplex.destroy();
          });
          duplex.once('close', () => finish(duplex.resetReason));
          return;
        }
        // The socket closed before both directions finished on the stream: cancel it.
        if (!(socket.readableEnded && duplex.writableFinished && duplex.readableEnded)) duplex.destroy();
      }
      finish(duplex.resetReason);
    });
    duplex.on('close', () => {
      if (!socket.destroyed && duplex.resetReason === undefined && socket.writableFinished && socket.readableEnded) socket.destroy();
    });
  });
  socket.pipe(duplex);
  duplex.pipe(socket);
  return { done, duplex };
}

/**
 * Joins a local TCP socket and a direct-path stream (QUIC) the same way: half-close both ways, backpressure
 * through the pipes, a peer reset aborts the local connection (RST), a local error resets the stream.
 * `done` resolves with the stream's error when it failed, `undefined` for a clean finish.
 */
export function bridgeDirect(socket: Socket, stream: Duplex): { done: Promise<Error | undefined> } {
  const done = new Promise<Error | undefined>((resolve) => {
    let failure: Error | undefined;
    let finished = false;
    const finish = (): void => {
      if (finished) return;
      finished = true;
      resolve(failure);
    };
    socket.on('error', () => {
      if (!stream.destroyed) stream.destroy();
    });
    stream.on('error', (error: Error) => {
      failure = error;
      if (!socket.destroyed) socket.resetAndDestroy();
      finish();
    });
    socket.on('close', (hadError: boolean) => {
      if (!stream.destroyed) {
        if (hadError || !socket.readableEnded) {
          // The local side aborted: reset the stream so the peer sees a failure, not a clean end.
          stream.destroy();
        } else if (!stream.writableFinished) {
          // The local side ended cleanly and closed; what it wrote may still be queued for the peer. Let the
          // stream send it and its FIN, then stop reading what nobody will take (resetting now would cut the
          // end of the data off: QUIC discards unsent bytes on a reset).
          stream.once('finish', () => {
            if (!stream.readableEnded) stream.destroy();
          });
        } else if (!stream.readableEnded) stream.destroy();
      }
      finish();
    });
    stream.on('close', () => {
      if (!socket.destroyed) {
        // Closed without finishing both ways (reset locally, e.g. revoked by policy): the application sees a reset.
        if (failure !== undefined || !(stream.readableEnded && stream.writableFinished)) socket.resetAndDestroy();
        else if (socket.writableFinished && socket.readableEnded) socket.destroy();
      }
      finish();
    });
  });
  socket.pipe(stream);
  stream.pipe(socket);
  return { done };
}
