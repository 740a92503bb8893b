// Weight statistics (stats/tensor_stats.h), each checked against a direct recomputation written
// out here in the simplest form (long double sums, linear scans), on synthetic data with known
// answers and on every tensor of the real stories260K model.
#include <QtTest>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>

#include "io/model_loader.h"
#include "quant/ggml_dequant.h"
#include "stats/tensor_stats.h"
#include "test_data.h"

using namespace ql;

namespace {

const std::string kStories = "models/stories260K/stories260K.gguf";

struct Naive {
    std::int64_t count = 0, nonFinite = 0;
    double min = 0, max = 0, mean = 0, std = 0, kurtosis = 0, absMax = 0, outlierShare = 0;
    std::vector<float> rowAbsMax, colAbsMax;
};

Naive naiveStats(const std::vector<float>& v, std::int64_t rows, std::int64_t cols, double k)
{
    Naive n;
    long double sum = 0;
    n.min = std::numeric_limits<double>::infinity();
    n.max = -n.min;
    n.rowAbsMax.assign(std::size_t(rows), 0.0f);
    n.colAbsMax.assign(std::size_t(cols), 0.0f);
    for (std::int64_t r = 0; r < rows; ++r)
        for (std::int64_t c = 0; c < cols; ++c) {
            const float x = v[std::size_t(r * cols + c)];
            if (!std::isfinite(x)) {
                ++n.nonFinite;
                continue;
            }
            ++n.count;
            sum += x;
            n.min = std::min(n.min, double(x));
            n.max = std::max(n.max, double(x));
            n.rowAbsMax[std::size_t(r)] = std::max(n.rowAbsMax[std::size_t(r)], std::fabs(x));
            n.colAbsMax[std::size_t(c)] = std::max(n.colAbsMax[std::size_t(c)], std::fabs(x));
        }
    const long double mean = sum / n.count;
    long double s2 = 0, s4 = 0;
    for (float x : v) {
        if (!std::isfinite(x)) continue;
        const long double d = x - mean;
        s2 += d * d;
        s4 += d * d * d * d;
    }
    n.mean = double(mean);
    n.std = double(std::sqrt(s2 / n.count));
    n.kurtosis = s2 > 0 ? double(n.count * s4 / (s2 * s2) - 3) : 0.0;
    n.absMax = std::max(std::fabs(n.min), std::fabs(n.max));
    std::int64_t beyond = 0;
    for (float x : v)
        if (std::isfinite(x) && std::fabs(double(x) - n.mean) > k * n.std) ++beyond;
    n.outlierShare = double(beyond) / double(n.count);
    return n;
}

// Bin i holds [lo + i*w, lo + (i+1)*w); the last bin also holds hi. Linear scan of the edges.
std::vector<std::uint64_t> naiveHistogram(const std::vector<float>& v, int bins, double lo,
                                          double hi)
{
    std::vector<std::uint64_t> counts(std::size_t(bins), 0);
    const double w = (hi - lo) / bins;
    for (float f : v) {
        const double x = f;
        if (!(x >= lo && x <= hi)) continue;
        int bin = 0;
        for (int i = 1; i < bins; ++i)
            if (x >= lo + i * w) bin = i;
        ++counts[std::size_t(bin)];
    }
    return counts;
}

// Cell i of n cells over `size` items covers [ceil(i*size/n), ceil((i+1)*size/n)).
std::int64_t cellStart(std::int64_t i, std::int64_t size, std::int64_t n)
{
    return (i * size + n - 1) / n;
}

std::vector<float> naiveHeatmap(const std::vector<float>& v, std::int64_t rows, std::int64_t cols,
                                int hr, int hc)
{
    std::vector<float> out(std::size_t(hr * hc), 0.0f);
    for (int i = 0; i < hr; ++i)
        for (int j = 0; j < hc; ++j)
            for (std::int64_t r = cellStart(i, rows, hr); r < cellStart(i + 1, rows, hr); ++r)
                for (std::int64_t c = cellStart(j, cols, hc); c < cellStart(j + 1, cols, hc); ++c) {
                    const float x = v[std::size_t(r * cols + c)];
                    if (std::isfinite(x))
                        out[std::size_t(i * hc + j)] =
                            std::max(out[std::size_t(i * hc + j)], std::fabs(x));
                }
    return out;
}

OutlierChannels naiveOutliers(const std::vector<float>& absMax, const OutlierRule& rule)
{
    OutlierChannels o;
    std::vector<float> sorted = absMax;
    std::sort(sorted.begin(), sorted.end());
    const std::size_t n = sorted.size();
    if (rule.mode == OutlierMode::MedianMultiple) {
        const double med =
            n % 2 ? sorted[n / 2] : 0.5 * (double(sorted[n / 2 - 1]) + sorted[n / 2]);
        o.threshold = rule.k * med;
    } else {
        long double s = 0, s2 = 0;
        for (float x : absMax) s += x;
        const long double mean = s / n;
        for (float x : absMax) s2 += (x - mean) * (x - mean);
        o.threshold = double(mean + rule.k * std::sqrt(s2 / n));
    }
    std::vector<std::pair<float, std::int32_t>> above;
    for (std::size_t i = 0; i < n; ++i)
        if (absMax[i] > o.threshold) above.push_back({-absMax[i], std::int32_t(i)});
    std::sort(above.begin(), above.end());  // descending abs-max, then ascending index
    for (auto& a : above) o.indices.push_back(a.second);
    return o;
}

bool relClose(double a, double b, double rel, double abs = 0)
{
    return std::fabs(a - b) <= abs + rel * std::max(std::fabs(a), std::fabs(b));
}

#define QL_VERIFY_CLOSE(a, b, rel, abs)   \
    QVERIFY2(                             \
        relClose((a), (b), (rel), (abs)), \
        qPrintable(                       \
            QString("%1 = %2, expected %3").arg(#a).arg((a), 0, 'g', 17).arg((b), 0, 'g', 17)))

// Compares every field of `s` with the naive recomputation.
void checkAgainstNaive(const TensorStats& s, const std::vector<float>& v, std::int64_t rows,
                       std::int64_t cols, const TensorStatsOptions& o)
{
    const Naive n = naiveStats(v, rows, cols, o.outliers.k);
    QCOMPARE(s.count, n.count);
    QCOMPARE(s.nonFinite, n.nonFinite);
    QCOMPARE(s.min, n.min);
    QCOMPARE(s.max, n.max);
    QCOMPARE(s.absMax, n.absMax);
    QL_VERIFY_CLOSE(s.mean, n.mean, 1e-9, 1e-12 * n.std);
    QL_VERIFY_CLOSE(s.std, n.std, 1e-9, 0);
    QL_VERIFY_CLOSE(s.kurtosis, n.kurtosis, 1e-7, 1e-9);
    QCOMPARE(s.outlierShare, n.outlierShare);
    QCOMPARE(s.rowAbsMax, n.rowAbsMax);
    QCOMPARE(s.colAbsMax, n.colAbsMax);

    const OutlierChannels rowOut = naiveOutliers(n.rowAbsMax, o.outliers);
    const OutlierChannels colOut = naiveOutliers(n.colAbsMax, o.outliers);
    QL_VERIFY_CLOSE(s.rowOutliers.threshold, rowOut.threshold, 1e-12, 0);
    QL_VERIFY_CLOSE(s.colOutliers.threshold, colOut.threshold, 1e-12, 0);
    QCOMPARE(s.rowOutliers.indices, rowOut.indices);
    QCOMPARE(s.colOutliers.indices, colOut.indices);

    QCOMPARE(s.histogram.lo, n.min);
    QCOMPARE(s.histogram.hi, n.max);
    QCOMPARE(s.histogram.counts, naiveHistogram(v, o.histogramBins, n.min, n.max));
    QCOMPARE(
        std::accumulate(s.histogram.counts.begin(), s.histogram.counts.end(), std::uint64_t(0)),
        std::uint64_t(n.count));

    const int hr = int(std::min<std::int64_t>(rows, o.heatmapMaxRows));
    const int hc = int(std::min<std::int64_t>(cols, o.heatmapMaxCols));
    QCOMPARE(s.heatmap.rows, hr);
    QCOMPARE(s.heatmap.cols, hc);
    QCOMPARE(s.heatmap.values, naiveHeatmap(v, rows, cols, hr, hc));
}

std::vector<float> gaussian(std::size_t n, double mean, double sd, unsigned seed)
{
    std::mt19937_64 rng(seed);
    std::normal_distribution<double> d(mean, sd);
    std::vector<float> v(n);
    for (float& x : v) x = float(d(rng));
    return v;
}

}  // namespace

class TestStats : public QObject {
    Q_OBJECT

private slots:
    // --- histogram --------------------------------------------------------------------

    void histogramEdges_data()
    {
        QTest::addColumn<std::vector<float>>("values");
        QTest::addColumn<int>("bins");
        QTest::addColumn<double>("lo");
        QTest::addColumn<double>("hi");
        QTest::addColumn<std::vector<std::uint64_t>>("expected");
        const float nan = std::numeric_limits<float>::quiet_NaN();
        const float inf = std::numeric_limits<float>::infinity();
        QTest::newRow("value == hi goes to the last bin")
            << std::vector<float>{0, 1, 2, 3, 4} << 4 << 0.0 << 4.0
            << std::vector<std::uint64_t>{1, 1, 1, 2};
        QTest::newRow("symmetric edges") << std::vector<float>{-1, -0.5f, 0, 0.5f, 1} << 4 << -1.0
                                         << 1.0 << std::vector<std::uint64_t>{1, 1, 1, 2};
        QTest::newRow("outside and NaN not counted")
            << std::vector<float>{-0.01f, 0.5f, 1.01f, nan, inf, -inf} << 2 << 0.0 << 1.0
            << std::vector<std::uint64_t>{0, 1};
        QTest::newRow("lo == hi: equal values in the last bin")
            << std::vector<float>{3, 3, 2.5f, 3.5f} << 3 << 3.0 << 3.0
            << std::vector<std::uint64_t>{0, 0, 2};
        QTest::newRow("one bin") << std::vector<float>{0.1f, 0.9f, 1} << 1 << 0.0 << 1.0
                                 << std::vector<std::uint64_t>{3};
        QTest::newRow("no bins") << std::vector<float>{1} << 0 << 0.0 << 1.0
                                 << std::vector<std::uint64_t>{};
        QTest::newRow("reversed range counts nothing")
            << std::vector<float>{0.5f} << 2 << 1.0 << 0.0 << std::vector<std::uint64_t>{};
    }
    void histogramEdges()
    {
        QFETCH(std::vector<float>, values);
        QFETCH(int, bins);
        QFETCH(double, lo);
        QFETCH(double, hi);
        QFETCH(std::vector<std::uint64_t>, expected);
        const Histogram h = computeHistogram(values, bins, lo, hi);
        QCOMPARE(h.counts, expected);
        QCOMPARE(h.lo, lo);
        QCOMPARE(h.hi, hi);
    }

    void histogramMatchesEdgesOnManyValues()
    {
        // 300k values on several threads, with values placed exactly on bin edges.
        std::vector<float> v = gaussian(300000, 0.0, 1.0, 3);
        for (int i = 0; i <= 64; ++i) v.push_back(float(-4.0 + i * 0.125));
        const Histogram h = computeHistogram(v, 64, -4.0, 4.0);
        QCOMPARE(h.counts, naiveHistogram(v, 64, -4.0, 4.0));
        QCOMPARE(h.binWidth(), 0.125);
    }

    // --- outlier channels -------------------------------------------------------------

    void outlierChannels()
    {
        const std::vector<float> absMax{1, 1, 1, 1, 10, 1, 20};
        OutlierChannels o = findOutlierChannels(absMax, {OutlierMode::MedianMultiple, 5.0});
        QCOMPARE(o.threshold, 5.0);
        QCOMPARE(o.indices, (std::vector<std::int32_t>{6, 4}));

        // Even count: median is the mean of the middle two (2 and 4 -> 3).
        o = findOutlierChannels(std::vector<float>{1, 2, 4, 50},
                                {OutlierMode::MedianMultiple, 2.0});
        QCOMPARE(o.threshold, 6.0);
        QCOMPARE(o.indices, (std::vector<std::int32_t>{3}));

        // mean 2, population std 2 over {0, 0, 0, 0, 4, 4, ... }: values {0,4,0,4,2} -> mean 2,
        // variance (4+4+4+4+0)/5 = 3.2.
        o = findOutlierChannels(std::vector<float>{0, 4, 0, 4, 2}, {OutlierMode::StdMultiple, 1.0});
        QVERIFY(relClose(o.threshold, 2.0 + std::sqrt(3.2), 1e-15));
        QCOMPARE(o.indices, (std::vector<std::int32_t>{1, 3}));  // ties keep index order

        o = findOutlierChannels({}, {});
        QCOMPARE(o.threshold, 0.0);
        QVERIFY(o.indices.empty());
    }

    // --- synthetic tensors with known answers ----------------------------------------

    void gaussianHasZeroExcessKurtosis()
    {
        const std::vector<float> v = gaussian(1 << 20, 0.5, 2.0, 1);
        TensorStatsOptions o;
        auto s = computeTensorStats(v, 1024, 1024, o);
        QVERIFY(s.ok());
        QVERIFY(std::fabs(s->mean - 0.5) < 0.01);
        QVERIFY(std::fabs(s->std - 2.0) < 0.01);
        // Standard error of the excess kurtosis is sqrt(24/n) ~ 0.005.
        QVERIFY2(std::fabs(s->kurtosis) < 0.025, qPrintable(QString::number(s->kurtosis)));
        // Beyond 5 sigma: ~6e-7 of a Gaussian.
        QVERIFY(s->outlierShare < 1e-5);
        checkAgainstNaive(*s, v, 1024, 1024, o);
    }

    void uniformHasKurtosisMinus1_2()
    {
        std::mt19937_64 rng(2);
        std::uniform_real_distribution<float> u(-1, 1);
        std::vector<float> v(1 << 20);
        for (float& x : v) x = u(rng);
        TensorStatsOptions o;
        o.outliers.k = 1.5;  // |x| > 1.5 * 0.577 = 0.866 -> share 0.134
        auto s = computeTensorStats(v, 512, 2048, o);
        QVERIFY(s.ok());
        QVERIFY2(std::fabs(s->kurtosis + 1.2) < 0.01, qPrintable(QString::number(s->kurtosis)));
        QVERIFY(std::fabs(s->std - 1 / std::sqrt(3.0)) < 0.002);
        QVERIFY(std::fabs(s->outlierShare - (1 - 1.5 / std::sqrt(3.0))) < 0.003);
        // Flat histogram: every bin within 10% of n/bins.
        for (std::uint64_t c : s->histogram.counts) QVERIFY(std::fabs(double(c) - 4096.0) < 410);
        checkAgainstNaive(*s, v, 512, 2048, o);
    }

    void largeOffsetKeepsPrecision()
    {
        // Mean 1000, std 1e-3: raw power sums in double would lose every digit of the kurtosis.
        const std::vector<float> v = gaussian(200000, 1000.0, 1e-3, 5);
        TensorStatsOptions o;
        auto s = computeTensorStats(v, 400, 500, o);
        QVERIFY(s.ok());
        checkAgainstNaive(*s, v, 400, 500, o);
    }

    void singleValueTensor()
    {
        const std::vector<float> v(100, 0.25f);
        TensorStatsOptions o;
        o.histogramBins = 5;
        auto s = computeTensorStats(v, 10, 10, o);
        QVERIFY(s.ok());
        QCOMPARE(s->min, 0.25);
        QCOMPARE(s->max, 0.25);
        QCOMPARE(s->mean, 0.25);
        QCOMPARE(s->std, 0.0);
        QCOMPARE(s->kurtosis, 0.0);
        QCOMPARE(s->outlierShare, 0.0);
        QVERIFY(s->histogram.lo < 0.25 && s->histogram.hi > 0.25);
        QCOMPARE(s->histogram.counts, (std::vector<std::uint64_t>{0, 0, 100, 0, 0}));
        QVERIFY(s->rowOutliers.indices.empty());  // 0.25 is not above 5 * 0.25
        QVERIFY(s->colOutliers.indices.empty());

        const std::vector<float> zeros(64, 0.0f);
        s = computeTensorStats(zeros, 1, 64, o);
        QVERIFY(s.ok());
        QCOMPARE(s->absMax, 0.0);
        QCOMPARE(s->histogram.counts[2], std::uint64_t(64));
        QVERIFY(s->colOutliers.indices.empty());
    }

    void nonFiniteValuesAreCountedApart()
    {
        std::vector<float> v = gaussian(64 * 96, 0.0, 1.0, 9);
        v[5] = std::numeric_limits<float>::quiet_NaN();
        v[700] = std::numeric_limits<float>::infinity();
        v[1000] = -std::numeric_limits<float>::infinity();
        for (int c = 0; c < 96; ++c)
            v[std::size_t(3 * 96 + c)] = std::numeric_limits<float>::quiet_NaN();
        TensorStatsOptions o;
        o.heatmapMaxRows = 7;
        o.heatmapMaxCols = 10;
        auto s = computeTensorStats(v, 64, 96, o);
        QVERIFY(s.ok());
        QCOMPARE(s->nonFinite, std::int64_t(3 + 96));
        QCOMPARE(s->rowAbsMax[3], 0.0f);  // a row of NaN has no magnitude
        QVERIFY(std::isfinite(s->mean) && std::isfinite(s->std) && std::isfinite(s->kurtosis));
        checkAgainstNaive(*s, v, 64, 96, o);
    }

    void heatmapCells()
    {
        // 5 x 7 into 2 x 3 cells: rows {0,1,2} {3,4}, columns {0,1,2} {3,4} {5,6}.
        std::vector<float> v(35);
        for (int i = 0; i < 35; ++i) v[std::size_t(i)] = float(i % 2 ? i : -i);
        TensorStatsOptions o;
        o.heatmapMaxRows = 2;
        o.heatmapMaxCols = 3;
        auto s = computeTensorStats(v, 5, 7, o);
        QVERIFY(s.ok());
        QCOMPARE(s->heatmap.rows, 2);
        QCOMPARE(s->heatmap.cols, 3);
        // Max |v| of cell = its bottom-right element's index: row-major index 7*r + c.
        QCOMPARE(s->heatmap.values, (std::vector<float>{16, 18, 20, 30, 32, 34}));
        // A small tensor keeps its own size.
        o.heatmapMaxRows = o.heatmapMaxCols = 256;
        s = computeTensorStats(v, 5, 7, o);
        QVERIFY(s.ok());
        QCOMPARE(s->heatmap.rows, 5);
        QCOMPARE(s->heatmap.cols, 7);
        for (int i = 0; i < 35; ++i) QCOMPARE(s->heatmap.values[std::size_t(i)], float(i));
        checkAgainstNaive(*s, v, 5, 7, o);
    }

    void badArguments()
    {
        const std::vector<float> v(12, 1.0f);
        TensorStatsOptions o;
        auto s = computeTensorStats(v, 5, 3, o);
        QVERIFY(!s.ok());
        QCOMPARE(s.error().code, ErrorCode::InvalidArgument);
        s = computeTensorStats(v, 0, 12, o);
        QVERIFY(!s.ok());
        o.histogramBins = 0;
        s = computeTensorStats(v, 3, 4, o);
        QVERIFY(!s.ok());
        QCOMPARE(s.error().code, ErrorCode::InvalidArgument);
    }

    void cancellation_data()
    {
        // The callback says stop at this fraction. Only the calling thread reports, and the
        // other workers may finish the rest of a sweep between two of its reports, so a stop
        // inside a sweep may land at the next sweep's start; 0.6 is the second sweep's first
        // report, which comes before any of its work (a stop at 0.7 raced on a busy 2-core CI).
        QTest::addColumn<double>("cancelAt");
        QTest::newRow("at once") << 0.0;
        QTest::newRow("in the first sweep") << 0.3;
        QTest::newRow("at the second sweep") << 0.6;
    }
    void cancellation()
    {
        QFETCH(double, cancelAt);
        const std::vector<float> v = gaussian(1 << 20, 0.0, 1.0, 4);
        double last = -1;
        bool monotonic = true;
        auto s = computeTensorStats(v, 1024, 1024, {}, [&](double f, std::string_view) {
            monotonic = monotonic && f >= last;
            last = f;
            return f < cancelAt;
        });
        QVERIFY(!s.ok());
        QCOMPARE(s.error().code, ErrorCode::Cancelled);
        QVERIFY(monotonic);
        QVERIFY(last >= cancelAt && last < 1.0);
    }

    void cacheHitsAndEvicts()
    {
        auto make = [](const std::string& name) {
            auto s = std::make_shared<TensorStats>();
            s->tensorName = name;
            return std::shared_ptr<const TensorStats>(s);
        };
        TensorStatsCache cache(2);
        TensorStatsOptions o, other;
        other.histogramBins = 64;
        const auto a = make("a"), b = make("b"), c = make("c");
        cache.insert("m.gguf", o, a);
        cache.insert("m.gguf", o, b);
        QCOMPARE(cache.find("m.gguf", "a", o), a);
        QCOMPARE(cache.find("m.gguf", "b", o), b);
        QVERIFY(!cache.find("m.gguf", "a", other));  // other options: a miss
        QVERIFY(!cache.find("n.gguf", "a", o));      // other model: a miss
        QCOMPARE(cache.find("m.gguf", "a", o), a);   // a is now the most recent
        cache.insert("m.gguf", o, c);                // evicts b, the least recently used
        QVERIFY(!cache.find("m.gguf", "b", o));
        QCOMPARE(cache.find("m.gguf", "a", o), a);
        QCOMPARE(cache.find("m.gguf", "c", o), c);
        // Same tensor with new options replaces the entry.
        const auto a2 = make("a");
        cache.insert("m.gguf", other, a2);
        QCOMPARE(cache.find("m.gguf", "a", other), a2);
        QVERIFY(!cache.find("m.gguf", "a", o));
        cache.clear();
        QVERIFY(!cache.find("m.gguf", "c", o));
    }

    // --- the real model -----------------------------------------------------------------

    void realTensors_data()
    {
        QTest::addColumn<QString>("tensor");
        QTest::addColumn<int>("mode");
        if (!test::haveData(kStories)) {
            QTest::newRow("no data") << QString() << 0;
            return;
        }
        auto model = openModel(test::dataPath(kStories));
        if (!model) qFatal("%s: %s", kStories.c_str(), model.error().message.c_str());
        for (const TensorInfo& t : model->tensors) {
            QTest::newRow((t.name + " median").c_str()) << QString::fromStdString(t.name) << 0;
            if (t.role == TensorRole::FfnDown || t.role == TensorRole::TokenEmbd)
                QTest::newRow((t.name + " std").c_str()) << QString::fromStdString(t.name) << 1;
        }
    }
    void realTensors()
    {
        QFETCH(QString, tensor);
        QFETCH(int, mode);
        QL_REQUIRE_DATA(kStories);
        static std::unique_ptr<Model> model;
        if (!model) {
            auto m = openModel(test::dataPath(kStories));
            QVERIFY(m.ok());
            model = std::make_unique<Model>(std::move(*m));
        }
        const TensorInfo* t = model->find(tensor.toStdString());
        QVERIFY(t);
        TensorStatsOptions o;
        o.histogramBins = 100;
        o.heatmapMaxRows = 48;  // downsample the 512-row embedding and 172-wide FFN
        o.heatmapMaxCols = 40;
        o.outliers = mode ? OutlierRule{OutlierMode::StdMultiple, 3.0}
                          : OutlierRule{OutlierMode::MedianMultiple, 2.0};
        auto s = computeTensorStats(*model, *t, o);
        QVERIFY2(s.ok(), s.ok() ? "" : s.error().message.c_str());
        QCOMPARE(s->tensorName, t->name);
        auto values = dequantizeTensor(*model, *t);
        QVERIFY(values.ok());
        QCOMPARE(s->rowAbsMax.size(), std::size_t(t->rows()));
        QCOMPARE(s->colAbsMax.size(), std::size_t(t->cols()));
        checkAgainstNaive(*s, *values, t->rows(), t->cols(), o);
        QCOMPARE(s->count, t->elementCount());
        QVERIFY(s->std > 0);
    }
};

QTEST_GUILESS_MAIN(TestStats)
#include "test_stats.moc"
