import Foundation
import XCTest
import RNN
@testable import RNNData

final class NumpyTests: XCTestCase {
    func testRoundTripAndHeader() throws {
        let a = NumpyArray(shape: [2, 3], values: .float([1, 2, 3, 4, 5, -6]))
        let bytes = a.encoded()
        XCTAssertEqual(bytes.count % 64, 24 % 64)  // 64-byte aligned header, 24 bytes of data
        XCTAssertEqual(try NumpyArray.parse(bytes), a)
        let b = NumpyArray(shape: [4], values: .int([0, -1, 7, 2]))
        XCTAssertEqual(try NumpyArray.parse(b.encoded()), b)
    }

    /// A file written by numpy itself (np.save of np.arange(6, dtype='<i8').reshape(2, 3) and of a
    /// float64 array), bytes spelled out: int64 and float64 are converted.
    func testNumpyWrittenInt64AndFloat64() throws {
        func npy(_ descr: String, _ shape: String, _ payload: [UInt8]) -> [UInt8] {
            var header = "{'descr': '\(descr)', 'fortran_order': False, 'shape': \(shape), }"
            while (10 + header.count + 1) % 64 != 0 { header += " " }
            header += "\n"
            return [0x93] + Array("NUMPY".utf8) + [1, 0, UInt8(header.count), 0] + Array(header.utf8) + payload
        }
        var ints: [UInt8] = []
        for v in 0..<6 { withUnsafeBytes(of: Int64(v).littleEndian) { ints += $0 } }
        XCTAssertEqual(try NumpyArray.parse(npy("<i8", "(2, 3)", ints)), NumpyArray(shape: [2, 3], values: .int([0, 1, 2, 3, 4, 5])))
        var doubles: [UInt8] = []
        for v in [0.5, -2.25] { withUnsafeBytes(of: v.bitPattern.littleEndian) { doubles += $0 } }
        XCTAssertEqual(try NumpyArray.parse(npy("<f8", "(2,)", doubles)), NumpyArray(shape: [2], values: .float([0.5, -2.25])))
    }

    func testRejectsBadFiles() {
        let good = NumpyArray(shape: [2, 3], values: .float([1, 2, 3, 4, 5, 6])).encoded()
        XCTAssertThrowsError(try NumpyArray.parse(Array(good.dropLast(4)))) { XCTAssertTrue("\($0)".contains("data shorter"), "\($0)") }
        XCTAssertThrowsError(try NumpyArray.parse([1, 2, 3]))
        var complex = good
        let at = (0..<(good.count - 3)).first { Array(good[$0..<($0 + 3)]) == Array("<f4".utf8) }!
        complex.replaceSubrange(at..<(at + 3), with: Array("<c8".utf8))
        XCTAssertThrowsError(try NumpyArray.parse(complex)) { XCTAssertTrue("\($0)".contains("unsupported dtype '<c8'"), "\($0)") }
    }
}

final class ArrayDatasetTests: XCTestCase {
    func write(_ a: NumpyArray, _ name: String, in dir: String) -> String {
        let path = "\(dir)/\(name)"
        _ = FileManager.default.createFile(atPath: path, contents: Data(a.encoded()))
        return path
    }

    func dir() -> String {
        let d = FileManager.default.temporaryDirectory.appendingPathComponent("rnn-dp-npy-\(UUID().uuidString)").path
        try! FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        return d
    }

    /// shuffle: false means step k uses samples k*B .. k*B+B-1 (mod N), in file order.
    func testSequentialOrderAndShapesForTokenInput() throws {
        let d = dir()
        let N = 5, T = 3
        let x = write(NumpyArray(shape: [N, T], values: .int((0..<(N * T)).map { Int32($0 % 7) })), "x.npy", in: d)
        let y = write(NumpyArray(shape: [N, T], values: .int((0..<(N * T)).map { Int32(($0 + 1) % 7) })), "y.npy", in: d)
        let ds = try ArrayDataset.fromNumpy(inputs: x, targets: y, validationInputs: nil, validationTargets: nil, validationFraction: 0,
                                            shuffle: false, seed: 1, maxValidation: 10, vocabulary: nil, classes: nil)
        XCTAssertEqual(ds.input, .tokens(vocabulary: 7))
        XCTAssertEqual(ds.outputSize, 7)
        XCTAssertEqual(ds.output, .everyStep)
        XCTAssertEqual(ds.loss, .crossEntropy)
        // Step 1 with B = 4: samples 4, 0, 1, 2.
        let b = ds.trainingBatch(step: 1, globalBatch: 4, rows: 0..<4)
        let firstTokens = (0..<4).map { b.tokens[$0] }  // t = 0 of each sample
        XCTAssertEqual(firstTokens, [4 * 3 % 7, 0, 3, 6].map(Int32.init))
        let part = ds.trainingBatch(step: 1, globalBatch: 4, rows: 2..<4)
        XCTAssertEqual((0..<2).map { part.tokens[$0] }, [3, 6])
    }

    func testShuffledEpochsArePermutations() throws {
        let d = dir()
        let N = 6
        let x = write(NumpyArray(shape: [N, 2, 1], values: .float((0..<(N * 2)).map { Float($0 / 2) })), "x.npy", in: d)
        let y = write(NumpyArray(shape: [N], values: .float((0..<N).map { Float($0) })), "y.npy", in: d)
        let ds = try ArrayDataset.fromNumpy(inputs: x, targets: y, validationInputs: nil, validationTargets: nil, validationFraction: 0,
                                            shuffle: true, seed: 3, maxValidation: 0, vocabulary: nil, classes: nil)
        XCTAssertEqual(ds.output, .lastStep)
        XCTAssertEqual(ds.loss, .mse)
        // Three steps of B = 4 cover two epochs: each epoch visits every sample once.
        var seen: [Int] = []
        for step in 0..<3 { seen += ds.trainingBatch(step: step, globalBatch: 4, rows: 0..<4).targetValues.map { Int($0) } }
        XCTAssertEqual(Set(seen[0..<6]), Set(0..<6))
        XCTAssertEqual(Set(seen[6..<12]), Set(0..<6))
        XCTAssertNotEqual(seen[0..<6].map { $0 }, Array(0..<6), "shuffled")
    }

    func testValidationFractionAndShapeErrors() throws {
        let d = dir()
        let x = write(NumpyArray(shape: [10, 4, 2], values: .float([Float](repeating: 0.5, count: 80))), "x.npy", in: d)
        let y = write(NumpyArray(shape: [10, 4, 3], values: .float([Float](repeating: 1, count: 120))), "y.npy", in: d)
        let ds = try ArrayDataset.fromNumpy(inputs: x, targets: y, validationInputs: nil, validationTargets: nil, validationFraction: 0.2,
                                            shuffle: true, seed: 1, maxValidation: 100, vocabulary: nil, classes: nil)
        XCTAssertEqual(ds.train.count, 8)
        XCTAssertEqual(ds.validationCount, 2)
        XCTAssertEqual(ds.outputSize, 3)
        XCTAssertEqual(ds.validationBatch(0..<2).targetValues.count, 4 * 2 * 3)
        let wrongN = write(NumpyArray(shape: [9], values: .int([Int32](repeating: 0, count: 9))), "wn.npy", in: d)
        XCTAssertThrowsError(try ArrayDataset.fromNumpy(inputs: x, targets: wrongN, validationInputs: nil, validationTargets: nil, validationFraction: 0,
                                                        shuffle: true, seed: 1, maxValidation: 0, vocabulary: nil, classes: nil)) {
            XCTAssertTrue("\($0)".contains("has 9 samples, inputs have 10"), "\($0)")
        }
        let ids = write(NumpyArray(shape: [2, 3], values: .int([0, 1, 2, 3, 4, 9])), "ids.npy", in: d)
        let cls = write(NumpyArray(shape: [2], values: .int([0, 1])), "cls.npy", in: d)
        XCTAssertThrowsError(try ArrayDataset.fromNumpy(inputs: ids, targets: cls, validationInputs: nil, validationTargets: nil, validationFraction: 0,
                                                        shuffle: true, seed: 1, maxValidation: 0, vocabulary: 5, classes: nil)) {
            XCTAssertTrue("\($0)".contains("token id 9 outside 0..<5"), "\($0)")
        }
    }

    /// A NaN or infinity in float inputs or targets is an error at load naming the file and the
    /// index (it used to surface at step 2 as a non-finite loss).
    func testNonFiniteValuesAreFoundAtLoad() throws {
        let d = dir()
        var values = [Float](repeating: 0.5, count: 80)
        values[2 * 8 + 3 * 2 + 1] = .nan  // sample 2, step 3, feature 1
        let x = write(NumpyArray(shape: [10, 4, 2], values: .float(values)), "x.npy", in: d)
        let y = write(NumpyArray(shape: [10, 4, 3], values: .float([Float](repeating: 1, count: 120))), "y.npy", in: d)
        XCTAssertThrowsError(try ArrayDataset.fromNumpy(inputs: x, targets: y, validationInputs: nil, validationTargets: nil, validationFraction: 0.2,
                                                        shuffle: true, seed: 1, maxValidation: 100, vocabulary: nil, classes: nil)) {
            XCTAssertTrue("\($0)".contains("x.npy: value nan at index [2, 3, 1] is not finite (1 such values)"), "\($0)")
        }
        var targets = [Float](repeating: 1, count: 120)
        targets[119] = .infinity
        let clean = write(NumpyArray(shape: [10, 4, 2], values: .float([Float](repeating: 0.5, count: 80))), "c.npy", in: d)
        let badY = write(NumpyArray(shape: [10, 4, 3], values: .float(targets)), "by.npy", in: d)
        XCTAssertThrowsError(try ArrayDataset.fromNumpy(inputs: clean, targets: badY, validationInputs: nil, validationTargets: nil, validationFraction: 0.2,
                                                        shuffle: true, seed: 1, maxValidation: 100, vocabulary: nil, classes: nil)) {
            XCTAssertTrue("\($0)".contains("by.npy: value inf at index [9, 3, 2] is not finite"), "\($0)")
        }
    }

    /// A CSV row with more (or fewer) fields than the header is an error naming the line.
    func testCSVRowWithAnExtraFieldIsAnError() throws {
        let path = "\(dir())/s.csv"
        _ = FileManager.default.createFile(atPath: path, contents: Data("t,v\n1,2\n2,3,9\n3,4\n".utf8))
        XCTAssertThrowsError(try SeriesDataset(path: path, column: "v", validationFraction: 0, interpolateMissing: false,
                                               steps: 1, output: .everyStep, seed: 1, maxValidation: 0)) {
            XCTAssertTrue("\($0)".contains("s.csv:3: has 3 fields, the header has 2"), "\($0)")
        }
    }

    func testBasicMotionsTSFiles() throws {
        let ds = try ArrayDataset.fromTS(path: sharedData("BasicMotions_TRAIN.ts"), validationPath: sharedData("BasicMotions_TEST.ts"),
                                         shuffle: true, seed: 1, maxValidation: 1000)
        XCTAssertEqual(ds.train.count, 40)
        XCTAssertEqual(ds.validationCount, 40)
        XCTAssertEqual(ds.steps, 100)
        XCTAssertEqual(ds.input, .dense(features: 6))
        XCTAssertEqual(ds.outputSize, 4)
        XCTAssertEqual(ds.classNames, ["Standing", "Running", "Walking", "Badminton"])
        // Channels are z-scored with the training statistics.
        guard case .features(let f, let w) = ds.train.inputs else { return XCTFail() }
        for c in 0..<w {
            let v = stride(from: c, to: f.count, by: w).map { Double(f[$0]) }
            XCTAssertEqual(v.reduce(0, +) / Double(v.count), 0, accuracy: 1e-4)
        }
        let b = ds.validationBatch(0..<40)
        XCTAssertEqual(Set(b.targetClasses), Set([0, 1, 2, 3]))
    }

    func testTSErrors() {
        let path = temporaryFile("@classLabel true a b\n@data\n1,2,3:4,5,6:a\n1,2:3,4,5:b\n", name: "x.ts")
        XCTAssertThrowsError(try ArrayDataset.readTS(path: path)) { XCTAssertTrue("\($0)".contains("x.ts:4: the dimensions of a sequence need the same number of values, got [2, 3]"), "\($0)") }
        let dims = temporaryFile("@classLabel true a b\n@data\n1,2,3:4,5,6:a\n1,2:b\n", name: "d.ts")
        XCTAssertThrowsError(try ArrayDataset.readTS(path: dims)) { XCTAssertTrue("\($0)".contains("d.ts:4: has 1 dimensions, the first sequence 2"), "\($0)") }
        let bad = temporaryFile("@classLabel true a b\n@data\n1,2,3:4,5,6:c\n", name: "y.ts")
        XCTAssertThrowsError(try ArrayDataset.readTS(path: bad)) { XCTAssertTrue("\($0)".contains("y.ts:3: expected dimensions separated by ':' and a class label"), "\($0)") }
    }

    /// Unequal lengths in a .ts file: padded with zeros, the lengths kept, z-scored over valid
    /// steps only; batches come packed.
    func testUnequalLengthTSFile() throws {
        let path = temporaryFile("@equalLength false\n@classLabel true a b\n@data\n1,2,3:4,5,6:a\n7,8:9,10:b\n", name: "u.ts")
        let r = try ArrayDataset.readTS(path: path)
        XCTAssertEqual(r.T, 3)
        XCTAssertEqual(r.lengths, [3, 2])
        XCTAssertEqual(r.features, [1, 4, 2, 5, 3, 6, 7, 9, 8, 10, 0, 0])
        let ds = try ArrayDataset.fromTS(path: path, validationPath: nil, shuffle: false, seed: 1, maxValidation: 0)
        XCTAssertTrue(ds.variableLength)
        guard case .features(let f, _) = ds.train.inputs else { return XCTFail() }
        let valid = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]  // (sample, step, channel) of the 5 valid steps x 2 channels
        let channel0 = valid.filter { $0 % 2 == 0 }.map { Double(f[$0]) }
        XCTAssertEqual(channel0.reduce(0, +), 0, accuracy: 1e-5, "z-scored over valid steps")
        XCTAssertEqual(Array(f[10...]), [0, 0], "padding stays zero")
        let b = ds.trainingBatch(step: 0, globalBatch: 2, rows: 0..<2)
        XCTAssertEqual(b.lengths, [3, 2])
        XCTAssertEqual(b.features.count, 5 * 2)
        // Bucketed batches larger than the data wrap round its permutation as often as needed.
        let small = try ArrayDataset.fromTS(path: path, validationPath: nil, shuffle: true, seed: 1, maxValidation: 0)
        XCTAssertEqual(small.members(step: 3, globalBatch: 5).count, 5)
        XCTAssertEqual(small.trainingBatch(step: 3, globalBatch: 5, rows: 0..<5).batchSize, 5)
    }

    /// JapaneseVowels: lengths 7 to 29; bucketed global batches carry far less padding than
    /// file-order ones, every epoch visits every sample, and dealing gives every shard about the
    /// same time steps while the batch and each sample's dropout identity stay independent of it.
    func testJapaneseVowelsBucketingAndDealing() throws {
        func load(bucketing: Bool) throws -> ArrayDataset {
            try ArrayDataset.fromTS(path: sharedData("JapaneseVowels_TRAIN.ts"), validationPath: sharedData("JapaneseVowels_TEST.ts"),
                                    shuffle: true, seed: 3, maxValidation: 1000, bucketing: bucketing)
        }
        let ds = try load(bucketing: true), plain = try load(bucketing: false)
        XCTAssertEqual(ds.train.count, 270)
        XCTAssertEqual(ds.validationCount, 370)
        XCTAssertEqual(ds.steps, 29)
        XCTAssertEqual(ds.train.lengths!.min(), 7)
        let B = 30
        var bucketed = 0.0, unbucketed = 0.0
        var seen = Set<Int>()
        for step in 0..<9 {  // one epoch: 270 / 30 batches
            seen.formUnion(ds.members(step: step, globalBatch: B))
            bucketed += ds.balance(step: step, globalBatch: B)!.padding
            unbucketed += plain.balance(step: step, globalBatch: B)!.padding
        }
        XCTAssertEqual(seen.count, 270, "an epoch visits every sample")
        XCTAssertLessThan(bucketed / 9, 0.1)
        XCTAssertGreaterThan(unbucketed / 9, 0.2)
        for step in [0, 5, 11] {
            var sets: [Set<[Int]>] = []
            for parts in [1, 2, 3, 5] {
                ds.parts = parts
                let (samples, keys) = ds.dealt(step: step, globalBatch: B)
                sets.append(Set(zip(samples, keys).map { [$0, $1] }))
                XCTAssertLessThan(ds.balance(step: step, globalBatch: B)!.imbalance, 0.05, "parts \(parts)")
                for p in 0..<parts {  // each shard's batch is packed longest first, keyed by the sorted batch
                    let rows = (p * B / parts)..<((p + 1) * B / parts)
                    let b = ds.trainingBatch(step: step, globalBatch: B, rows: rows)
                    XCTAssertEqual(b.lengths.map { Int($0) }, rows.map { ds.length(ds.train, samples[$0]) }.sorted(by: >))
                    XCTAssertEqual(Set(b.rowKeys), Set(keys[rows]))
                }
            }
            XCTAssertEqual(Set(sets).count, 1, "the same samples with the same keys for any number of shards")
        }
        ds.parts = 1
        let v = ds.validationBatch(0..<128)
        XCTAssertEqual(v.features.count, v.validSteps * 12)
    }

    /// npy inputs padded to T with a lengths file; the lengths file's errors name it.
    func testNumpyLengths() throws {
        let d = dir()
        let N = 4, T = 5
        let lengths: [Int32] = [2, 5, 1, 3]
        // Class -100 (PyTorch's ignore_index) and NaN features in the padding are never read.
        let y = write(NumpyArray(shape: [N, T], values: .int((0..<(N * T)).map { $0 % T < lengths[$0 / T] ? Int32($0 % 3) : -100 })), "y.npy", in: d)
        let x = write(NumpyArray(shape: [N, T, 2], values: .float((0..<(N * T * 2)).map { $0 / 2 % T < lengths[$0 / 2 / T] ? Float($0) : .nan })), "x.npy", in: d)
        let l = write(NumpyArray(shape: [N], values: .int(lengths)), "l.npy", in: d)
        let ds = try ArrayDataset.fromNumpy(inputs: x, targets: y, validationInputs: nil, validationTargets: nil, validationFraction: 0.25,
                                            shuffle: false, seed: 1, maxValidation: 10, vocabulary: nil, classes: nil, lengths: l)
        XCTAssertEqual(ds.train.lengths, [2, 5, 1])
        XCTAssertEqual(ds.outputSize, 3, "the padding's -100 is not a class")
        XCTAssertEqual(ds.validation?.lengths, [3])
        let b = ds.trainingBatch(step: 0, globalBatch: 3, rows: 0..<3)
        XCTAssertEqual(b.lengths, [5, 2, 1])
        XCTAssertEqual(b.targetClasses.count, 8, "every_step targets at valid steps only")
        // Sample 1 (length 5) is packed row 0 of each step: its step t features are x[1, t, :].
        XCTAssertEqual(Array(b.features[0..<2]), [10, 11])
        XCTAssertEqual(Array(b.features[6..<8]), [12, 13])  // step 1: rows 3, 4 (samples 1, 0)
        for (values, shape, message) in [([Int32(2), 6, 1, 3], [4], "length 6 of sample 1 is outside 1...5"),
                                         ([2, 0, 1, 3], [4], "length 0 of sample 1 is outside 1...5"),
                                         ([2, 5, 1], [3], "lengths must be an (N,) integer array with N = 4")] {
            let bad = write(NumpyArray(shape: shape, values: .int(values)), "bad.npy", in: d)
            XCTAssertThrowsError(try ArrayDataset.fromNumpy(inputs: x, targets: y, validationInputs: nil, validationTargets: nil, validationFraction: 0,
                                                            shuffle: false, seed: 1, maxValidation: 10, vocabulary: nil, classes: nil, lengths: bad)) {
                XCTAssertTrue("\($0)".contains("bad.npy: " + message), "\($0)")
            }
        }
    }
}
