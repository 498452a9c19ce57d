import Foundation
import XCTest
import RNNTrain
import Margins

/// Checkpoints, exact resume, signals, lost ranks, non-finite steps, hung collectives; all under
/// a real mpirun.
final class DurabilityTests: XCTestCase {
    /// An Adam + plateau LSTM run on the adding problem: optimizer state and schedule state must
    /// both survive a resume.
    func config(_ dir: String, steps: Int, extra: String = "") -> String {
        let path = "\(dir)/c.yaml"
        MPIRunner.write("""
        seed: 9
        data: {kind: synthetic, length: 8}
        model: {cell: lstm, hidden_size: 12, layers: 2, batch_norm: true}
        training:
          global_batch_size: 7
          steps: \(steps)
          threads: 1
          eval_every: 3
          eval_samples: 20
          optimizer: {name: adam, learning_rate: 0.01}
          schedule: {name: plateau, patience: 1, factor: 0.5}
          clip_norm: 1.0
        checkpoint: {every: 4, keep: 2}
        output: {directory: \(dir)/out, log_every: 1}
        \(extra)
        """, to: path)
        return path
    }

    func tensors(_ path: String) throws -> [String: [UInt32]] {
        let f = try SafeTensors.read(path: path)
        return Dictionary(uniqueKeysWithValues: f.tensors.map { ($0.name, $0.values.map(\.bitPattern)) })
    }

    /// Interrupted at step 8 and resumed at the same N: bitwise the run that was never interrupted.
    /// Resumed at another N: the same data order, equal within float tolerance.
    func testResumeIsExactAtTheSameRankCountAndCloseAtAnother() throws {
        let full = MPIRunner.tempDir()
        XCTAssertEqual(try MPIRunner.run(np: 2, ["train", "--config", config(full, steps: 14)]).status, 0)
        let reference = try tensors("\(full)/out/model.safetensors")

        let part = MPIRunner.tempDir()
        let first = try MPIRunner.run(np: 2, ["train", "--config", config(part, steps: 8)])
        XCTAssertEqual(first.status, 0, first.stderr)
        // checkpoint.keep = 2: steps 4 and 8 remain; `latest` names step 8.
        let ckdir = "\(part)/out/checkpoints"
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: ckdir).sorted(),
                       ["ckpt-00000004.safetensors", "ckpt-00000008.safetensors", "latest"])
        let resumed = try MPIRunner.run(np: 2, ["train", "--resume", ckdir, "--set", "training.steps=14"])
        XCTAssertEqual(resumed.status, 0, resumed.stderr)
        XCTAssertTrue(resumed.stdout.contains("resumed from \(ckdir)/ckpt-00000008.safetensors at step 8"), resumed.stdout)
        XCTAssertEqual(try tensors("\(part)/out/model.safetensors"), reference, "bitwise equal to the uninterrupted run")
        // The checkpoint carries the optimizer state under PyTorch-style names.
        let ck = try SafeTensors.read(path: "\(ckdir)/ckpt-00000014.safetensors")
        XCTAssertNotNil(ck.tensor("optimizer.exp_avg.rnn.weight_hh_l0"))
        XCTAssertNotNil(ck.tensor("rnn.bn_running_mean_l1"))
        XCTAssertEqual(ck.metadata["step"], "14")
        XCTAssertEqual(ck.metadata["samples_seen"], "98")
        // metrics.jsonl continues: steps 1..14 once each.
        let steps = try String(contentsOfFile: "\(part)/out/metrics.jsonl", encoding: .utf8).split(separator: "\n").compactMap {
            (try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])?["step"] as? Int
        }
        XCTAssertEqual(steps, Array(1...14))

        let other = MPIRunner.tempDir()
        XCTAssertEqual(try MPIRunner.run(np: 2, ["train", "--config", config(other, steps: 6)]).status, 0)
        let at3 = try MPIRunner.run(np: 3, ["train", "--resume", "\(other)/out/checkpoints", "--set", "training.steps=14"])
        XCTAssertEqual(at3.status, 0, at3.stderr)
        let m = try tensors("\(other)/out/model.safetensors")
        var worst = 0.0
        for (name, ref) in reference {
            let got = try XCTUnwrap(m[name], name)
            for (a, b) in zip(got, ref) {
                let x = Double(Float(bitPattern: a)), y = Double(Float(bitPattern: b))
                worst = max(worst, abs(x - y) / max(abs(y), 1e-2))
            }
        }
        Margin.report("Durability", "resumed at np=3 vs uninterrupted np=2", value: worst, must: .below, bound: 1e-4)
        XCTAssertLessThan(worst, 1e-4, "resumed at np=3 vs uninterrupted np=2")
    }

    /// SIGUSR1 to one rank: all ranks stop at the next step boundary, rank 0 checkpoints, the job
    /// exits with 75; the resumed run ends on the same parameters as an uninterrupted one.
    func testSignalToOneRankCheckpointsAndResumes() throws {
        let dir = MPIRunner.tempDir()
        let path = config(dir, steps: 100_000, extra: "")
        let started = Date()
        let job = try MPIRunner.start(np: 2, ["train", "--config", path])
        XCTAssertTrue(MPIRunner.waitForStep(10, metricsIn: "\(dir)/out"), "the job did not reach step 10")
        let pids = MPIRunner.rankPIDs(containing: path)
        XCTAssertEqual(pids.count, 2)
        kill(pids.last!, SIGUSR1)
        let r = MPIRunner.finish(job, started: started, timeout: 60)
        XCTAssertEqual(r.status, 75, r.stderr)
        let line = try XCTUnwrap(r.stderr.split(separator: "\n").first { $0.contains("SIGUSR1 received: checkpoint written at step") }, r.stderr)
        let stepText = line.split(separator: " ").drop { $0 != "step" }.dropFirst().first!
        let stopped = try XCTUnwrap(Int(stepText), String(line))
        XCTAssertGreaterThanOrEqual(stopped, 10)
        XCTAssertTrue(FileManager.default.fileExists(atPath: "\(dir)/out/checkpoints/\(Checkpoint.fileName(step: stopped))"))

        let total = stopped + 5
        let resumed = try MPIRunner.run(np: 2, ["train", "--resume", "\(dir)/out/checkpoints", "--set", "training.steps=\(total)"])
        XCTAssertEqual(resumed.status, 0, resumed.stderr)
        let straight = MPIRunner.tempDir()
        XCTAssertEqual(try MPIRunner.run(np: 2, ["train", "--config", config(straight, steps: total)]).status, 0)
        XCTAssertEqual(try tensors("\(dir)/out/model.safetensors"), try tensors("\(straight)/out/model.safetensors"))
    }

    /// A rank killed with SIGKILL ends the job (no hang); resuming from the last checkpoint loses
    /// at most checkpoint.every steps.
    func testKilledRankEndsTheJobAndTheRunResumes() throws {
        let dir = MPIRunner.tempDir()
        let path = config(dir, steps: 100_000)
        let started = Date()
        let job = try MPIRunner.start(np: 2, ["train", "--config", path])
        XCTAssertTrue(MPIRunner.waitForStep(13, metricsIn: "\(dir)/out"))
        let pids = MPIRunner.rankPIDs(containing: path)
        XCTAssertEqual(pids.count, 2)
        kill(pids.last!, SIGKILL)
        let killedAt = Date()
        let r = MPIRunner.finish(job, started: started, timeout: 90)
        XCTAssertNotEqual(r.status, 0)
        XCTAssertLessThan(Date().timeIntervalSince(killedAt), 30, "the job must end within 30 s of losing a rank")
        let latest = try Checkpoint.resolve("\(dir)/out/checkpoints")
        let file = try Checkpoint.read(path: latest)
        let saved = try XCTUnwrap(Int(file.metadata["step"] ?? ""))
        let lines = try String(contentsOfFile: "\(dir)/out/metrics.jsonl", encoding: .utf8).split(separator: "\n")
        let reached = lines.compactMap { (try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])?["step"] as? Int }.max()!
        XCTAssertGreaterThanOrEqual(saved, 12)
        XCTAssertLessThanOrEqual(reached - saved, 4, "lost more than checkpoint.every steps")
        let resumed = try MPIRunner.run(np: 2, ["train", "--resume", latest, "--set", "training.steps=\(saved + 3)"])
        XCTAssertEqual(resumed.status, 0, resumed.stderr)
    }

    func testNonFiniteGradientStopsWithTheLastGoodState() throws {
        let dir = MPIRunner.tempDir()
        let r = try MPIRunner.run(np: 2, ["train", "--config", config(dir, steps: 20)], env: ["RNN_DP_FAULT": "nan:1:6"])
        XCTAssertEqual(r.status, 1, r.stderr)
        XCTAssertTrue(r.stderr.contains("rnn-dp: error: step 6 has a non-finite loss"), r.stderr)
        XCTAssertTrue(r.stderr.contains("(in rnn.weight_ih_l0)"), r.stderr)
        XCTAssertTrue(FileManager.default.fileExists(atPath: "\(dir)/out/checkpoints/\(Checkpoint.fileName(step: 5))"), r.stderr)
    }

    func testNonFiniteGradientSkippedThenTooManyInARow() throws {
        let dir = MPIRunner.tempDir()
        let r = try MPIRunner.run(np: 2, ["train", "--config", config(dir, steps: 10, extra: "")],
                                  env: ["RNN_DP_FAULT": "nan:0:6"],
                                  timeout: 60)
        // Default is stop; with skip the run completes and records the skipped step.
        XCTAssertEqual(r.status, 1)
        let skip = MPIRunner.tempDir()
        let s = try MPIRunner.run(np: 2, ["train", "--config", config(skip, steps: 10), "--set", "training.on_nonfinite=skip"],
                                  env: ["RNN_DP_FAULT": "nan:0:6"])
        XCTAssertEqual(s.status, 0, s.stderr)
        XCTAssertTrue(s.stderr.contains("step 6: non-finite loss"), s.stderr)
        let last = try String(contentsOfFile: "\(skip)/out/metrics.jsonl", encoding: .utf8).split(separator: "\n").last!
        let obj = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(last.utf8)) as? [String: Any])
        XCTAssertEqual(obj["skipped_steps"] as? Int, 1)
        let strict = MPIRunner.tempDir()
        let t = try MPIRunner.run(np: 2, ["train", "--config", config(strict, steps: 10), "--set", "training.on_nonfinite=skip",
                                          "--set", "training.max_skipped=1"], env: ["RNN_DP_FAULT": "nan:0:6"])
        XCTAssertEqual(t.status, 1, t.stderr)
        XCTAssertTrue(t.stderr.contains("1 steps in a row had a non-finite loss"), t.stderr)
    }

    /// A rank that never reaches the collective: the others' watchdog ends the job, naming the
    /// step and the collective it waited in.
    func testWatchdogEndsAJobWithAHungRank() throws {
        let dir = MPIRunner.tempDir()
        let r = try MPIRunner.run(np: 2, ["train", "--config", config(dir, steps: 50), "--set", "training.timeout_seconds=3"],
                                  env: ["RNN_DP_FAULT": "hang:1:5"], timeout: 60)
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("rnn-dp: error (rank 0): step 5: wait for a gradient bucket's allreduce"), r.stderr)
        XCTAssertTrue(r.stderr.contains("did not complete within 3.0 s"), r.stderr)
        XCTAssertLessThan(r.seconds, 30)
    }

    func testResumeErrors() throws {
        let dir = MPIRunner.tempDir()
        let r = try MPIRunner.run(np: 2, ["train", "--resume", "\(dir)/nothing"])
        XCTAssertEqual(r.status, 2)
        XCTAssertTrue(r.stderr.contains("rnn-dp: error: --resume: \(dir)/nothing: no such checkpoint file or directory"), r.stderr)
        XCTAssertEqual(try MPIRunner.run(np: 0, ["train", "--config", config(dir, steps: 4)]).status, 0)
        let ck = "\(dir)/out/checkpoints"
        let wrong = try MPIRunner.run(np: 2, ["train", "--resume", ck, "--set", "training.optimizer.name=sgd"])
        XCTAssertEqual(wrong.status, 2, wrong.stderr)
        XCTAssertTrue(wrong.stderr.contains("was written with optimizer adam, the config says sgd"), wrong.stderr)
        let shape = try MPIRunner.run(np: 2, ["train", "--resume", ck, "--set", "model.hidden_size=13", "--set", "training.steps=8"])
        XCTAssertEqual(shape.status, 2, shape.stderr)
        XCTAssertTrue(shape.stderr.contains("has shape [48, 2], this model needs [52, 2]"), shape.stderr)
        let past = try MPIRunner.run(np: 2, ["train", "--resume", ck, "--set", "training.steps=2"])
        XCTAssertEqual(past.status, 2, past.stderr)
        XCTAssertTrue(past.stderr.contains("the checkpoint is at step 4, past training.steps 2"), past.stderr)
    }
}
